"""The NATS bus: typed msgpack publish/subscribe of msgspec structs over raw nats-py, plus JetStream setup.

Handlers get decoded structs; a payload that fails to decode is counted in ``decode_errors`` and skipped,
never allowed to kill the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from brixmesh.common.messages import PAYLOAD_ERRORS

if TYPE_CHECKING:
    from brixmesh.common.settings import ServiceSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[str, T], Awaitable[None] | None]

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decoder_for(schema: Any) -> msgspec.msgpack.Decoder[Any]:
    found = _decoders.get(schema)
    if found is None:
        found = _decoders[schema] = msgspec.msgpack.Decoder(schema)
    return found


class BusConnectError(Exception):
    """NATS could not be reached; ``str()`` is one line naming the URL and the setting."""


ReconnectHook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class NatsAuth:
    """Who we are to NATS (user/password or a token) and how TLS verifies the server (and presents our
    certificate)."""

    user: str = ""
    password: str = ""
    token: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> NatsAuth:
        return cls(
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value(),
            token=settings.nats_token.get_secret_value(),
            tls_ca_file=str(settings.nats_tls_ca_file or ""),
            tls_cert_file=str(settings.nats_tls_cert_file or ""),
            tls_key_file=str(settings.nats_tls_key_file or ""),
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect``; ``ssl.SSLError``/``OSError`` on unusable TLS files."""
        options: dict[str, Any] = {}
        if self.user:
            options |= {"user": self.user, "password": self.password}
        if self.token:
            options["token"] = self.token
        if self.tls_ca_file or self.tls_cert_file:
            context = ssl.create_default_context(cafile=self.tls_ca_file or None)
            if self.tls_cert_file:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            options["tls"] = context
        return options


class Bus:
    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self.decode_errors = 0
        self.closing = False
        self.reconnects = 0
        self._reconnect_hooks: list[ReconnectHook] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        timeout_s: float = 5.0,
        setting: str = "BRIXMESH_NATS_URL",
        auth: NatsAuth | None = None,
    ) -> Bus:
        """Connect within ``timeout_s`` (nats-py retries the servers meanwhile); once connected, the client
        reconnects forever with a short wait, buffering publishes while the server is away."""
        owner: list[Bus] = []
        try:
            options = (auth or NatsAuth()).connect_options()
        except (OSError, ssl.SSLError) as exc:
            raise BusConnectError(f"cannot use the NATS TLS files: {exc}") from None

        async def on_disconnect() -> None:
            if not (owner and owner[0].closing):
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")
            if owner:
                owner[0]._reconnected()

        connect_errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if owner:
                log.warning("nats error: %s", exc)
            elif not (connect_errors and _refused(connect_errors[0])):
                # while connecting, nats-py retries: the last error becomes the one-line reason, unless the
                # server refused our credentials (the connection reset that follows says less)
                connect_errors[:] = [exc]

        client = NatsClient()
        try:
            await asyncio.wait_for(
                client.connect(
                    url.split(","),
                    name=name,
                    connect_timeout=max(1, int(timeout_s)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **options,
                ),
                timeout_s,
            )
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            # a cancelled connect leaves nats-py's retry tasks behind, still presenting our credentials
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, asyncio.TimeoutError) and connect_errors and _refused(connect_errors[0]):
                raise BusConnectError(f"NATS at {url} refused our credentials: {connect_errors[0]}") from None
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"{connect_errors[0]}" if connect_errors else "no answer in time"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            raise BusConnectError(f"cannot reach NATS at {url} (set {setting}): {reason}") from None
        bus = cls(client)
        owner.append(bus)
        return bus

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Run ``hook()`` after every reconnect (subscriptions are back by then): what was published while
        the connection was down is lost, so state learned from the bus must be re-fetched."""
        self._reconnect_hooks.append(hook)

    def _reconnected(self) -> None:
        self.reconnects += 1
        # As tasks: nats-py awaits this callback inside its reconnect sequence, where a request cannot run.
        for hook in self._reconnect_hooks:
            task = asyncio.get_running_loop().create_task(self._run_hook(hook))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(self, hook: ReconnectHook) -> None:
        try:
            await hook()
        except Exception:
            log.exception("reconnect hook failed")

    @property
    def connected(self) -> bool:
        return self.client.is_connected

    @property
    def jetstream(self) -> JetStreamContext:
        return self.client.jetstream()

    async def publish(self, subject: str, message: Any, headers: dict[str, str] | None = None) -> None:
        await self.client.publish(subject, _encoder.encode(message), headers=headers)

    async def subscribe(
        self, pattern: str, schema: type[T] | Any, handler: Handler[T], *, queue: str = ""
    ) -> Subscription:
        """Subscribe ``handler(subject, decoded)``; sync handlers run inline (fast path), async ones awaited."""
        decoder = decoder_for(schema)

        async def on_message(msg: Msg) -> None:
            try:
                decoded = decoder.decode(msg.data)
            except PAYLOAD_ERRORS:
                self.decode_errors += 1
                return
            result = handler(msg.subject, decoded)
            if result is not None:
                await result

        return await self._live(await self.client.subscribe(pattern, queue=queue, cb=on_message,
                                                            pending_msgs_limit=1_000_000))

    async def serve(
        self, pattern: str, schema: type[T] | Any, responder: Callable[[str, T], Any], *, queue: str = ""
    ) -> Subscription:
        """Answer requests on ``pattern``: ``responder(subject, decoded)`` returns the struct to reply with."""
        decoder = decoder_for(schema)

        async def on_request(msg: Msg) -> None:
            try:
                decoded = decoder.decode(msg.data)
            except PAYLOAD_ERRORS:
                self.decode_errors += 1
                return
            if msg.reply:
                await self.client.publish(msg.reply, _encoder.encode(responder(msg.subject, decoded)))

        return await self._live(await self.client.subscribe(pattern, queue=queue, cb=on_request))

    async def _live(self, subscription: Subscription) -> Subscription:
        """Round-trip to the server so that what is published after we return reaches the subscription."""
        if self.client.is_connected:
            await self.sync()
        return subscription

    async def sync(self) -> None:
        """Return once the server has processed everything sent so far (subscriptions included)."""
        # nats-py's flush() writes its PING straight to the socket, ahead of the commands still queued for
        # its flusher task (a SUB just made), so that PONG proves nothing about them. The flusher writes
        # them before that PONG can be read: the second PING follows them, and its PONG does.
        await self.client.flush()
        await self.client.flush()

    async def request(self, subject: str, message: Any, schema: type[T], timeout_s: float = 1.0) -> T:
        reply = await self.client.request(subject, _encoder.encode(message), timeout=timeout_s)
        return decoder_for(schema).decode(reply.data)

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create the stream, or bring an existing one to ``config``; safe to call from every replica."""
        js = self.jetstream
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                return
            except BadRequestError as exc:
                if exc.err_code != 10058:  # created concurrently by another replica
                    raise
        await js.update_stream(config)

    async def close(self) -> None:
        if self.client.is_closed:
            return
        self.closing = True
        for task in self._hook_tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self.client.drain(), timeout=5)
        except (asyncio.TimeoutError, nats.errors.Error):
            await self.client.close()


class Batcher(Generic[T]):
    """Collects items and flushes them together when ``max_items`` is reached or ``max_delay_s`` has passed.

    For high-rate subjects: one NATS message per batch instead of one per item.
    """

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[None]], *, max_items: int = 256, max_delay_s: float = 0.005
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._max_delay_s = max_delay_s
        self._items: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self._max_items:
            self._schedule_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay_s, self._schedule_flush)

    def _schedule_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        items, self._items = self._items, []
        task = asyncio.get_running_loop().create_task(self._flush(items))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        self._schedule_flush()
        if self._pending:
            await asyncio.gather(*self._pending)


def _refused(exc: Exception) -> bool:
    return "authorization violation" in str(exc).lower() or "authentication" in str(exc).lower()
