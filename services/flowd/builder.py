"""Raw events -> flows and their wire payloads, at the rate the ring delivers them.

decode() builds a flow from scratch, which costs tens of microseconds in Python. Events of
one shape (same header fields, same packet headers as far as decode reads them) make flows
that differ only in time and uuid, so the builder decodes the first event of each shape and
keeps the rest of its flow as a Template: the fields, their msgpack bytes, the subject and
the metric children. Every later event of that shape costs a dict copy and a few bytes.

Invariants: build(raw) equals decode(raw) with the same time and uuid, and its payload
decodes to FlowEvent(flow).to_wire(). A template holds metadata (pods, labels, rules) of one
Metadata.version; the cache is emptied when the version moves, and when it is full.
"""
from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from services.datapath.maps.events import HEADER_SIZE
from services.flowd import packet
from services.flowd.decode import decode
from services.flowd.metadata import Metadata
from services.wire import subjects
from services.wire.messages import SCHEMA_VERSION, FlowEvent

# Templates kept. A template with its packed bytes is ~8 KB; traffic that makes a new shape
# per connection (a new source port each) would fill a larger cache with templates used once.
CAPACITY = 1024

# struct flow_event: the header bytes a flow depends on (all but ktime, orig_len, cap_len).
_KTIME = slice(0, 8)
_KEYED = (slice(8, 28), slice(34, HEADER_SIZE))
_CAP_LEN = slice(32, 34)

# FlowEvent(flow).to_wire() is {"v": SCHEMA_VERSION, "kind": "flow", "flow": {...}}.
_ENVELOPE = (b"\x83" + msgpack.packb("v") + msgpack.packb(SCHEMA_VERSION) + msgpack.packb("kind") +
             msgpack.packb(FlowEvent.KIND) + msgpack.packb("flow"))
_TIME_KEY, _UUID_KEY = msgpack.packb("time"), msgpack.packb("uuid")


def map_header(size: int) -> bytes:
    """msgpack's header for a map of SIZE pairs."""
    if size < 16:
        return bytes([0x80 | size])
    if size < 1 << 16:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def pack_str(text: str) -> bytes:
    """msgpack's encoding of a str shorter than 256 bytes, as packb gives it, without the
    cost of a Packer per call."""
    raw = text.encode()
    size = len(raw)
    return (bytes((0xA0 | size,)) if size < 32 else bytes((0xD9, size))) + raw


@dataclass(frozen=True, slots=True)
class Template:
    fields: dict            # the flow without time and uuid; shared by every flow built from
                            # it (a flow is never modified once built)
    head: bytes             # envelope and flow map header, before time and uuid
    tail: bytes             # every other pair of the flow map, packed
    subject: str
    counters: tuple         # the metric children this flow increments (FlowMetrics.children)


class Uuid4:
    """Random (version 4) UUIDs as text, from a PRNG seeded by os.urandom: the identifiers
    only have to be unique, and uuid.uuid4() costs more than the rest of a cached flow."""

    def __init__(self, rand: random.Random | None = None) -> None:
        self._bits = (rand or random.Random()).getrandbits

    def __call__(self) -> str:
        n = self._bits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Rfc3339:
    """Unix nanoseconds as Hubble prints times (decode.rfc3339), formatting each second once."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{frac:09d}Z"


class FlowBuilder:
    def __init__(self, meta: Metadata, node: str, counters: Callable[[dict], tuple],
                 capacity: int = CAPACITY, new_uuid: Callable[[], str] | None = None) -> None:
        self.meta = meta
        self.node = node
        self.counters = counters
        self.capacity = capacity
        self.new_uuid = new_uuid or Uuid4()
        self.rfc3339 = Rfc3339()
        self._templates: dict[bytes, Template] = {}
        self._version = meta.version
        self.hits = 0
        self.misses = 0

    def lookup(self, raw: bytes) -> tuple[bytes, Template | None]:
        """RAW's shape key and its template, if one is cached for the current metadata."""
        if self.meta.version != self._version:
            self._templates.clear()
            self._version = self.meta.version
        cap_len = int.from_bytes(raw[_CAP_LEN], sys.byteorder)
        key = raw[_KEYED[0]] + raw[_KEYED[1]] + packet.shape(raw[HEADER_SIZE:HEADER_SIZE + cap_len])
        template = self._templates.get(key)
        if template is None:
            self.misses += 1
        else:
            self.hits += 1
        return key, template

    def add(self, key: bytes, raw: bytes) -> Template:
        """Decode RAW into the template for KEY. Raises decode's errors for a record that is
        not an event."""
        flow = decode(raw, self.meta, self.node, 0, new_uuid=str)
        del flow["time"], flow["uuid"]
        tail = b"".join(pack(k) + pack(v) for k, v in flow.items())
        template = Template(flow, _ENVELOPE + map_header(len(flow) + 2), tail,
                            subjects.flows(self.node, flow["verdict"]), self.counters(flow))
        if self.meta.version != self._version or len(self._templates) >= self.capacity:
            self._templates.clear()
            self._version = self.meta.version
        self._templates[key] = template
        return template

    def flow(self, raw: bytes, template: Template, clock_offset_ns: int) -> tuple[dict, bytes]:
        """RAW's flow, from its template, and the flow's payload."""
        when = self.rfc3339(int.from_bytes(raw[_KTIME], sys.byteorder) + clock_offset_ns)
        uuid = self.new_uuid()
        payload = b"".join((template.head, _TIME_KEY, pack_str(when), _UUID_KEY, pack_str(uuid), template.tail))
        return {"time": when, "uuid": uuid, **template.fields}, payload

    def build(self, raw: bytes, clock_offset_ns: int) -> tuple[dict, bytes, Template]:
        """lookup, add on a miss, then flow: what the pipeline does, without metadata refresh."""
        key, template = self.lookup(raw)
        if template is None:
            template = self.add(key, raw)
        return (*self.flow(raw, template, clock_offset_ns), template)
