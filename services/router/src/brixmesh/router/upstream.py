"""The HTTP client side: one pooled aiohttp session to every engine, and usage extraction from responses.

aiohttp was chosen over httpx by measurement (see ``bench/router_overhead.py`` and the router README section
of the closing report): per proxied request it costs a fraction of httpx's client time on the same loop.
"""

from __future__ import annotations

import aiohttp
import msgspec

from brixmesh.router.routing.context import Usage


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_UsageOnly)


def new_session(connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class StreamUsage:
    """Watches SSE bytes going by: keeps the ``usage`` chunk if the engine sends one (``include_usage``), else
    counts content events as a completion-token estimate. Cheap: only chunks mentioning usage are decoded."""

    __slots__ = ("events", "usage", "_tail")

    def __init__(self) -> None:
        self.events = 0
        self.usage: Usage | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data: ")
        if b'"usage"' not in chunk and b'"usage"' not in self._tail + chunk[:16]:
            self._tail = chunk[-16:]
            return
        data = self._tail + chunk
        self._tail = chunk[-16:]
        for line in data.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                found = usage_of_body(line[6:])
                if found is not None:
                    self.usage = found

    def result(self, prompt_estimate: int) -> Usage:
        if self.usage is not None:
            return self.usage
        completion = max(0, self.events - 2)  # the role chunk and [DONE] carry no tokens
        return Usage(prompt_estimate, completion, prompt_estimate + completion)
