"""uvicorn's httptools protocol, with a response's head and its first body bytes sent in one socket write.

uvicorn writes the head when the app sends ``http.response.start`` and the body when it sends
``http.response.body``: two ``write`` syscalls per response, each a full trip through the TCP stack (on
loopback, delivery to the reader happens inside the writer's syscall). Holding the head until the next write
makes it one. Measured in ``bench/router_overhead.py``, where the router's CPU per request is mostly Python
and syscalls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeadHoldingTransport:
    """Wraps a transport: a write that is a whole response head is held and joined to the next write; a head
    nothing follows within the loop iteration is sent on its own, so holding only ever merges writes.

    A body chunk that happens to look like a head is held the same way: order and content are unchanged."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # one writev, no copy of the body
        elif data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (len(self._held) if self._held is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadHoldingHttpToolsProtocol(HttpToolsProtocol):
    """What :func:`brixmesh.common.service.run` serves HTTP with (``uvicorn.Config(http=...)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
