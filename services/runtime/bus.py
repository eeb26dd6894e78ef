"""The NATS side of every service: connect, serve requests, call others, drain.

Handlers take a decoded, validated message and return a result. They raise
``ServiceError(code, message)`` for anything the caller did wrong or cannot have; one wrapper
turns that (or any other exception, as ``internal``) into an error reply and a counted metric.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import structlog
import nats.errors
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from services.runtime.metrics import BusMetrics
from services.wire import codec, subjects
from services.wire.messages import (INTERNAL, INVALID, UNAVAILABLE, Message, SchemaError,
                                    error_reply, ok_reply)

log = structlog.get_logger()


class ServiceError(Exception):
    """An error a handler reports to its caller: a code from wire.messages and one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(ServiceError):
    """An error reply received from another service (or no reply at all)."""


@dataclass(frozen=True)
class Credentials:
    """A NATS CLI context file: {"url", "user", "password"} (written mode 0600)."""

    url: str
    user: str
    password: str

    @classmethod
    def load(cls, path: Path) -> "Credentials":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ServiceError(UNAVAILABLE, f"no NATS credentials at {path}: is the node up?") from None
        except (OSError, ValueError) as exc:
            raise ServiceError(INVALID, f"cannot read NATS credentials {path}: {exc}") from None
        return cls(url=data["url"], user=data["user"], password=data["password"])


Handler = Callable[[Any], Awaitable[Any]]


class Bus:
    def __init__(self, nc: nats.NATS, metrics: BusMetrics | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.metrics = metrics
        self._subs: list = []
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.lost = asyncio.Event()     # a one-shot client (retry=False) lost its connection

    @classmethod
    async def connect(cls, creds: Credentials, name: str, metrics: BusMetrics | None = None,
                      connect_timeout: float = 2.0, retry: bool = True) -> "Bus":
        """Connect as CREDS.user; replies come to that user's own inbox prefix, the only
        inbox its permissions let it subscribe to."""
        holder: dict[str, Bus] = {}

        async def reconnected() -> None:
            log.info("nats reconnected")
            for callback in holder["bus"]._on_reconnect:
                await callback()

        async def disconnected() -> None:
            log.warning("nats disconnected")

        async def error(exc: Exception) -> None:
            log.warning("nats error", error=str(exc))

        async def quiet(_exc: Exception) -> None:
            pass

        async def gone() -> None:
            holder["bus"].lost.set()

        # Services reconnect forever and log it; a one-shot client (the CLI) fails fast, quietly,
        # and a command that follows learns from `lost` that nothing more will come.
        callbacks = dict(reconnected_cb=reconnected, disconnected_cb=disconnected, error_cb=error) \
            if retry else dict(error_cb=quiet, disconnected_cb=gone)
        try:
            nc = await nats.connect(
                creds.url, user=creds.user, password=creds.password, name=name,
                connect_timeout=connect_timeout, max_reconnect_attempts=-1 if retry else 1,
                reconnect_time_wait=0.5, allow_reconnect=retry,
                inbox_prefix=subjects.inbox_prefix(creds.user).encode(), **callbacks,
            )
        except Exception as exc:  # nats raises several unrelated types here
            raise ServiceError(UNAVAILABLE, f"cannot connect to NATS at {creds.url}: {exc}") from None
        bus = holder["bus"] = cls(nc, metrics)
        return bus

    def can_publish_many(self) -> bool:
        return self.nc.is_connected and hasattr(self.nc, "_send_command")

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish MESSAGES, in order, as one write (check can_publish_many() first).

        A flow stream sends tens of thousands of messages a second, and nats-py's publish()
        costs more per message than building its frame (a future and a queue put per call).
        The PUB frames go through the client's own pending buffer (_send_command and
        _flush_pending, unchanged across nats-py 2.x), so they keep their order with every
        other publish and share its flushing. Raises what publish() raises."""
        nc = self.nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        frames = []
        size = 0
        for subject, payload in messages:
            if len(payload) > nc.max_payload:
                raise nats.errors.MaxPayloadError
            frames.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
            size += len(payload)
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += size
        await nc._send_command(b"".join(frames))
        await nc._flush_pending()

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run CALLBACK after every reconnect: KV watchers are re-listed and reconciled there."""
        self._on_reconnect.append(callback)

    async def serve(self, subject: str, schema: type[Message] | None, handler: Handler) -> None:
        """Answer requests on SUBJECT; SCHEMA validates the body (None: body ignored)."""

        async def on_msg(msg) -> None:
            started = time.perf_counter()
            try:
                body = codec.decode(msg.data) if msg.data else {}
                request = schema.from_wire(body) if schema else body
                result = await handler(request)
                reply = ok_reply(result)
            except (SchemaError, codec.DecodeError) as exc:
                reply = error_reply(INVALID, str(exc))
            except ServiceError as exc:
                reply = error_reply(exc.code, exc.message)
            except Exception as exc:
                log.exception("handler failed", subject=subject)
                reply = error_reply(INTERNAL, f"{type(exc).__name__}: {exc}")
            if self.metrics:
                self.metrics.requests.labels(subject).inc()
                self.metrics.latency.labels(subject).observe(time.perf_counter() - started)
                if not reply["ok"]:
                    self.metrics.errors.labels(subject, reply["error"]["code"]).inc()
            if not reply["ok"]:
                log.info("request refused", subject=subject, **reply["error"])
            if msg.reply:
                await msg.respond(codec.encode(reply))

        self._subs.append(await self.nc.subscribe(subject, cb=on_msg))

    async def listen(self, subject: str, schema: type[Message], handler: Handler) -> None:
        """Consume events on SUBJECT; a bad event is logged and dropped, never fatal."""

        async def on_msg(msg) -> None:
            try:
                await handler(schema.from_wire(codec.decode(msg.data)))
            except (SchemaError, codec.DecodeError) as exc:
                log.warning("bad event dropped", subject=msg.subject, error=str(exc))
            except Exception:
                log.exception("event handler failed", subject=msg.subject)

        self._subs.append(await self.nc.subscribe(subject, cb=on_msg))

    async def request(self, subject: str, message: Message | dict | None = None,
                      timeout: float = 5.0) -> Any:
        """Call SUBJECT and return the result, or raise RemoteError with the callee's error."""
        payload = message.to_wire() if isinstance(message, Message) else (message or {})
        try:
            msg = await self.nc.request(subject, codec.encode(payload), timeout=timeout)
        except NoRespondersError:
            raise RemoteError(UNAVAILABLE, f"nothing answers {subject}: is its service running?") from None
        except NatsTimeout:
            raise RemoteError(UNAVAILABLE, f"no answer on {subject} within {timeout:g}s") from None
        except (nats.errors.Error, OSError) as exc:     # the connection is closed or lost
            raise RemoteError(UNAVAILABLE, f"no connection to NATS for {subject}: "
                                           f"{exc or type(exc).__name__}") from None
        reply = codec.decode(msg.data)
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        raise RemoteError(err.get("code", INTERNAL), err.get("message", "error without a message"))

    async def publish(self, subject: str, message: Message) -> None:
        await self.nc.publish(subject, codec.encode(message.to_wire()))

    async def kv(self, bucket: str, create: bool = False, history: int = 1) -> KeyValue:
        """Bind to BUCKET; its owner passes create=True (file storage, synced writes)."""
        try:
            return await self.js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise ServiceError(UNAVAILABLE, f"KV bucket {bucket} does not exist yet") from None
        return await self.js.create_key_value(bucket=bucket, history=history)

    async def drain(self) -> None:
        """Stop taking requests, finish the ones in flight, then close."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=5)
        except Exception:
            await self.close()

    async def close(self) -> None:
        """Close at once. A connection lost with writes pending makes nats-py's close raise
        its socket's error: closed is closed all the same."""
        try:
            await self.nc.close()
        except (OSError, nats.errors.Error):
            pass


async def kv_get(kv: KeyValue, key: str) -> dict | None:
    """The decoded value at KEY, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return codec.decode(entry.value) if entry.value else None


async def kv_items(kv: KeyValue) -> dict[str, dict]:
    """Every live key in the bucket, decoded."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    out = {}
    for key in keys:
        value = await kv_get(kv, key)
        if value is not None:
            out[key] = value
    return out
