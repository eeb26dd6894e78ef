"""cap_events (ring buffer) and cap_events_stats (per-CPU counts). Owner: flowd.

Must match struct flow_event / struct event_stats in bpf/lib/events.h. The ring is read
through the bcc object that created it (services/flowd/ring.py); this module holds the
record layout the decoder parses and typed access to the stats.
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import EVENT_CAPTURE_LEN, EVENT_STATS_KEY
from services.datapath.pinned import PinnedMap

RING_PIN_NAME = "events"
STATS_PIN_NAME = "events_stats"


class FlowEvent(ct.Structure):
    _fields_ = [
        ("ktime", ct.c_uint64),
        ("type", ct.c_uint8),
        ("subtype", ct.c_uint8),
        ("endpoint_id", ct.c_uint16),
        ("ifindex", ct.c_uint32),
        ("src_identity", ct.c_uint32),
        ("dst_identity", ct.c_uint32),
        ("rule_id", ct.c_uint32),
        ("orig_len", ct.c_uint32),
        ("cap_len", ct.c_uint16),
        ("direction", ct.c_uint8),
        ("reason", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("match_type", ct.c_uint8),
        ("pad", ct.c_uint16),
        ("data", ct.c_uint8 * EVENT_CAPTURE_LEN),
    ]


HEADER_SIZE = FlowEvent.data.offset


class EventStats(ct.Structure):
    _fields_ = [("emitted", ct.c_uint64), ("lost", ct.c_uint64)]


@dataclass(frozen=True)
class Stats:
    """Events the ring took, and events lost because it was full, summed over CPUs."""

    emitted: int
    lost: int

    def __sub__(self, other: "Stats") -> "Stats":
        return Stats(self.emitted - other.emitted, self.lost - other.lost)


class EventStatsMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / STATS_PIN_NAME, ct.c_uint32, EventStats, percpu=True)

    def read(self) -> Stats:
        per_cpu = self.map.get_percpu(ct.c_uint32(EVENT_STATS_KEY))
        return Stats(sum(v.emitted for v in per_cpu), sum(v.lost for v in per_cpu))

    def close(self) -> None:
        self.map.close()
