"""The NATS side of every service: connect, serve requests, call others, drain.

Handlers take a decoded, validated message and return a result. They raise
``ServiceError(code, message)`` for anything the caller did wrong or cannot have; one wrapper
turns that (or any other exception, as ``internal``) into an error reply and a counted metric.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import structlog
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, Error as JetStreamError, KeyNotFoundError
from nats.js.kv import KeyValue

from services.runtime.credentials import Credentials, RemoteError, ServiceError
from services.runtime.gil import paused_collection
from services.wire import codec, subjects
from services.wire.messages import (EXHAUSTED, INTERNAL, INVALID, UNAVAILABLE, Message, SchemaError,
                                    error_reply, ok_reply)

if TYPE_CHECKING:       # services pass their metrics in; a client (the CNI plugin) need not import prometheus
    from services.runtime.metrics import BusMetrics

log = structlog.get_logger()


OFF_LOOP_BYTES = 65536       # request bodies larger than this are decoded on a worker thread


class _TlsHalfCloseNotice(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl".

    A NATS connection starts in clear (the server's INFO) and nats-py upgrades it to TLS, so
    the stream protocol it opened with never learns it is over TLS and, when the server ends
    the connection, asks to keep the half-closed transport open, which TLS cannot do. Nothing
    is wrong, yet asyncio warns each time: after every CLI command against a TLS server (every
    cluster node's), and in the services' logs on every reconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


def _quiet_tls_half_close() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _TlsHalfCloseNotice) for f in asyncio_log.filters):
        asyncio_log.addFilter(_TlsHalfCloseNotice())


def _read(data: bytes, schema: type[Message] | None) -> tuple[Any, Any]:
    """A request's decoded body and its message (raises DecodeError or SchemaError)."""
    body = codec.decode(data) if data else {}
    return body, (schema.from_wire(body, decoded=True) if schema else body)


def _read_large(data: bytes, schema: type[Message] | None) -> tuple[Any, Any]:
    """_read for a worker thread, letting the event loop's thread run meanwhile."""
    with paused_collection():
        body = codec.decode(data, share_gil=True)
        return body, (schema.from_wire(body, decoded=True) if schema else body)


class _Turn:
    """A request's place on a concurrent subject: handlers of requests with one order key
    start in arrival order (policyd takes a policy's lock in its handler's first step),
    though a large body is decoded on a worker thread meanwhile; a request behind it with
    the same key waits that long to start, one with another key does not."""

    def __init__(self, before: asyncio.Event | None) -> None:
        self.before = before                 # set once the request before this one started
        self.started = asyncio.Event()


class _Turns:
    """The latest turn of each order key on one concurrent subject: only keys in flight."""

    def __init__(self) -> None:
        self.last: dict[Any, asyncio.Event] = {}

    def take(self, key: Any) -> _Turn:
        turn = _Turn(self.last.get(key))
        self.last[key] = turn.started
        return turn

    def done(self, key: Any, turn: _Turn) -> None:
        if self.last.get(key) is turn.started:
            del self.last[key]


async def _handled(handed: list[bytes], schema: type[Message] | None, handler: Handler,
                   turn: _Turn | None) -> Any:
    """HANDLER's result for the request body in HANDED, which nothing else holds (decoded
    off the event loop when large, and let go once decoded: 3 MB at 100,000 peers)."""
    try:
        data = handed.pop()
        if len(data) > OFF_LOOP_BYTES:      # megabytes of msgpack: a third of a second under load
            body, request = await asyncio.to_thread(_read_large, data, schema)
        else:
            body, request = _read(data, schema)
        del data
        if turn is not None and turn.before is not None:
            await turn.before.wait()
        # The handler's task holds the only reference to the request: it may let a large one
        # go before it is done (policyd parses a 100,000-peer policy and keeps it packed).
        # Tasks take their first step in the order they are made.
        task = asyncio.ensure_future(handler(request))
        del body, request
    finally:
        if turn is not None:
            turn.started.set()
    return await task


class StateUnreadable(ServiceError):
    """A KV bucket whose contents could not be read with certainty: its state is unknown,
    never "empty". Callers must not act on it (delete, re-plan) and should try again later."""

    def __init__(self, bucket: str, why: str) -> None:
        super().__init__(UNAVAILABLE, f"cannot read KV bucket {bucket}: {why}")
        self.bucket = bucket


Handler = Callable[[Any], Awaitable[Any]]


class Bus:
    def __init__(self, nc: nats.NATS, metrics: BusMetrics | None = None, node: str | None = None) -> None:
        self.nc = nc
        self.node = node        # in a cluster: whose subjects this connection serves and calls
        self.js = nc.jetstream()
        self.metrics = metrics
        self._subs: list = []
        self._handling: set[asyncio.Task] = set()      # requests of concurrent subjects in progress
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.lost = asyncio.Event()     # a one-shot client (retry=False) lost its connection

    @classmethod
    async def connect(cls, creds: Credentials, name: str, metrics: BusMetrics | None = None,
                      connect_timeout: float = 2.0, retry: bool = True, node: str | None = None) -> "Bus":
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
        tls_context = creds.tls_context()
        if tls_context:
            _quiet_tls_half_close()
        try:
            nc = await nats.connect(
                list(creds.servers) or creds.url, user=creds.user, dont_randomize=True, password=creds.password, name=name,
                **({"tls": tls_context} if tls_context else {}),
                connect_timeout=connect_timeout, max_reconnect_attempts=-1 if retry else 1,
                reconnect_time_wait=0.5, allow_reconnect=retry,
                inbox_prefix=subjects.inbox_prefix(creds.user).encode(), **callbacks,
            )
        except Exception as exc:  # nats raises several unrelated types here
            raise ServiceError(UNAVAILABLE, f"cannot connect to NATS at {creds.url}: {exc}") from None
        bus = holder["bus"] = cls(nc, metrics, node or creds.node)
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

    async def serve(self, subject: str, schema: type[Message] | None, handler: Handler,
                    concurrent: bool = False, order_key: Callable[[bytes], Any] | None = None) -> None:
        """Answer requests on SUBJECT; SCHEMA validates the body (None: body ignored).
        One request at a time, in arrival order, unless CONCURRENT: then each request is
        handled as its own task as it arrives (the handler does its own locking), and the
        handlers of requests whose raw bodies have one ORDER_KEY (default: all) start in
        the order the requests arrived."""

        async def on_msg(msg, turn: _Turn | None = None) -> None:
            started = time.perf_counter()
            try:
                handed, msg.data = [msg.data], b""
                reply = ok_reply(await _handled(handed, schema, handler, turn))
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
                data = codec.encode(reply)
                if len(data) > self.nc.max_payload:        # would never arrive: say so instead
                    data = codec.encode(error_reply(EXHAUSTED, f"the answer on {subject} is {len(data)} bytes, "
                                                               f"over the bus's limit of {self.nc.max_payload}"))
                await msg.respond(data)

        turns = _Turns()

        async def spawn(msg) -> None:
            key = order_key(msg.data) if order_key else None
            turn = turns.take(key)
            task = asyncio.create_task(on_msg(msg, turn))
            task.add_done_callback(lambda _t: turns.done(key, turn))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

        self._subs.append(await self.nc.subscribe(subjects.on_node(subject, self.node), cb=spawn if concurrent else on_msg))

    async def listen(self, subject: str, schema: type[Message], handler: Handler) -> None:
        """Consume events on SUBJECT; a bad event is logged and dropped, never fatal."""

        async def on_msg(msg) -> None:
            try:
                await handler(schema.from_wire(codec.decode(msg.data), decoded=True))
            except (SchemaError, codec.DecodeError) as exc:
                log.warning("bad event dropped", subject=msg.subject, error=str(exc))
            except Exception:
                log.exception("event handler failed", subject=msg.subject)

        self._subs.append(await self.nc.subscribe(subjects.on_node(subject, self.node), cb=on_msg))

    async def request(self, subject: str, message: Message | dict | None = None,
                      timeout: float = 5.0, node: str | None = None) -> Any:
        """Call SUBJECT (on node NODE in a cluster; default: this connection's) and return the
        result, or raise RemoteError with the callee's error."""
        payload = message.to_wire() if isinstance(message, Message) else (message or {})
        try:
            msg = await self.nc.request(subjects.on_node(subject, node or self.node), codec.encode(payload),
                                        timeout=timeout)
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
        await self.nc.publish(subjects.on_node(subject, self.node), codec.encode(message.to_wire()))

    async def kv(self, bucket: str, create: bool = False, history: int = 1, replicas: int = 1) -> KeyValue:
        """Bind to BUCKET; its owner passes create=True (file storage, synced writes), and in
        a cluster the copies JetStream keeps (REPLICAS, one per node up to 3)."""
        try:
            return await self.js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise ServiceError(UNAVAILABLE, f"KV bucket {bucket} does not exist yet") from None
        try:
            return await self.js.create_key_value(bucket=bucket, history=history, replicas=replicas)
        except JetStreamError:
            # another node's owner made it first (same settings): bind to theirs
            return await self.js.key_value(bucket)

    async def node_kv(self, bucket: str, replicas: int = 1, history: int = 1) -> KeyValue | NodeKV:
        """BUCKET for state that belongs to this node: in a cluster, this node's keys of a
        bucket every node shares (NodeKV); alone, the bucket itself."""
        kv = await self.kv(bucket, create=True, history=history, replicas=replicas)
        return NodeKV(kv, self.node) if self.node else kv

    async def on_kv_write(self, bucket: str, callback: Callable[[], None]) -> None:
        """Call CALLBACK whenever anyone, on any server of the cluster, writes or deletes a key
        of BUCKET (a core subscription to its subjects: no consumer, nothing replayed). A
        trigger to read the bucket again, never the state itself: a write missed while
        disconnected is caught by the caller's periodic full read."""
        async def poke(_msg) -> None:
            callback()

        self._subs.append(await self.nc.subscribe(f"$KV.{bucket}.>", cb=poke))

    async def kv_items(self, kv: KeyValue) -> dict[str, dict]:
        """Every live key in KV's bucket (see kv_items below: raises StateUnreadable)."""
        return await kv_items(self.js, kv)

    async def kv_read(self, kv: KeyValue) -> tuple[dict[str, dict], int]:
        """kv_items, and the revision the read began at (see kv_read below)."""
        return await kv_read(self.js, kv)

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


class NodeKV:
    """One node's part of a bucket the whole cluster shares: the same calls as a KeyValue,
    every key under "<node>.", and kv_items reads only those. A lone node's buckets are its
    own already (Bus.node_kv gives the bucket itself)."""

    def __init__(self, kv: KeyValue, node: str) -> None:
        self.kv = kv
        self.node = node
        self.scope = f"{node}."

    async def get(self, key: str):
        return await self.kv.get(self.scope + key)

    async def put(self, key: str, value: bytes) -> int:
        return await self.kv.put(self.scope + key, value)

    async def create(self, key: str, value: bytes) -> int:
        return await self.kv.create(self.scope + key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        return await self.kv.delete(self.scope + key, last=last)

    async def status(self):
        return await self.kv.status()


async def kv_get(kv: KeyValue, key: str) -> dict | None:
    """The decoded value at KEY, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return codec.decode(entry.value) if entry.value else None


class _Inconsistent(Exception):
    """The bucket's stream and what was read from it disagree (a write raced the read)."""


KV_READ_ATTEMPTS = 6
DELETED = ("DEL", "PURGE")            # KV-Operation header of delete and purge markers


async def kv_items(js, kv: KeyValue, attempts: int = KV_READ_ATTEMPTS) -> dict[str, dict]:
    """Every live key in KV's bucket, decoded (see kv_read)."""
    return (await kv_read(js, kv, attempts))[0]


async def kv_read(js, kv: KeyValue, attempts: int = KV_READ_ATTEMPTS) -> tuple[dict[str, dict], int]:
    """Every live key in KV's bucket, decoded, and the revision (the bucket stream's last
    sequence) the read began at: every write up to it is in what was read, later ones may
    be or not. Raises StateUnreadable rather than guess.

    The keys come from the bucket's stream itself (JetStream stream info with per-subject
    message counts), never from KeyValue.keys(): its watcher may report "no keys" when its
    initial-data marker overtakes the values, which happens under load. A bucket is empty
    only when its stream holds no message, or when the last message of every subject is a
    delete or purge marker. The per-subject counts must add up to the stream's message count
    (a stream info answer lists at most 100,000 subjects); a read that disagrees is retried
    and, ATTEMPTS times in a row, refused."""
    status = await _bucket_status(kv)
    why = ""
    for attempt in range(attempts):
        try:
            return await _read_bucket(js, kv, status.bucket)
        except _Inconsistent as exc:
            why = str(exc)
        except (NatsError, JetStreamError, asyncio.TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        log.warning("KV read failed, retrying", bucket=status.bucket, attempt=attempt + 1, error=why)
        await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
    raise StateUnreadable(status.bucket, f"{why} ({attempts} attempts)")


async def _bucket_status(kv: KeyValue):
    try:
        return await kv.status()
    except (NatsError, JetStreamError, asyncio.TimeoutError) as exc:
        raise StateUnreadable(getattr(kv, "_name", "?"), f"{type(exc).__name__}: {exc}") from None


async def _read_bucket(js, kv: KeyValue, bucket: str) -> tuple[dict[str, dict], int]:
    # Every subject is listed, also for a NodeKV: the counts must add up over the whole stream.
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
    prefix = f"$KV.{bucket}.{kv.scope if isinstance(kv, NodeKV) else ''}"
    state = info.state
    if not state.messages:
        return {}, state.last_seq
    counts = state.subjects or {}
    if sum(counts.values()) != state.messages:
        raise _Inconsistent(f"the stream holds {state.messages} messages but its subjects "
                            f"account for {sum(counts.values())}")
    out = {}
    for subject in sorted(counts):
        if not subject.startswith(prefix):
            continue                        # another node's key in a shared bucket
        key = subject[len(prefix):]
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:
            if exc.op in DELETED:
                continue
            raise _Inconsistent(f"key {key} is in the stream but could not be read") from None
        if entry.value:
            out[key] = codec.decode(entry.value)
    return out, state.last_seq
