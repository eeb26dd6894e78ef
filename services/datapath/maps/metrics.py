"""cap_metrics: per-CPU packet/byte counters by (direction, reason). Owner: endpointd.

Must match struct metrics_value in bpf/lib/metrics.h; index = direction << 8 | reason.
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import METRIC_EGRESS, METRIC_INGRESS
from services.datapath.pinned import PinnedMap

PIN_NAME = "metrics"


class MetricsValue(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


@dataclass(frozen=True)
class Counter:
    direction: int
    reason: int
    packets: int
    bytes: int


class MetricsMap:
    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / PIN_NAME, ct.c_uint32, MetricsValue, percpu=True)

    def read(self, direction: int, reason: int) -> Counter:
        per_cpu = self.map.get_percpu(ct.c_uint32((direction << 8) | reason))
        return Counter(direction, reason, sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))

    def nonzero(self) -> list[Counter]:
        out = []
        for direction in (METRIC_INGRESS, METRIC_EGRESS):
            for reason in range(256):
                c = self.read(direction, reason)
                if c.packets:
                    out.append(c)
        return out

    def close(self) -> None:
        self.map.close()
