"""cap_metrics: per-CPU packet/byte counters by (direction, reason); cap_ep_metrics: per-CPU
packet/byte counters per endpoint. Owner: endpointd.

Must match struct metrics_value and struct ep_metrics in bpf/lib/metrics.h; the cap_metrics
index is direction << 8 | reason, the cap_ep_metrics key the endpoint id.
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import METRIC_EGRESS, METRIC_INGRESS
from services.datapath.pinned import PinnedMap

PIN_NAME = "metrics"
EP_PIN_NAME = "ep_metrics"


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


class EndpointMetricsValue(ct.Structure):
    _fields_ = [("rx_packets", ct.c_uint64), ("rx_bytes", ct.c_uint64),
                ("tx_packets", ct.c_uint64), ("tx_bytes", ct.c_uint64)]


@dataclass(frozen=True)
class EndpointCounter:
    """What an endpoint sent (tx: out of the pod) and was delivered (rx: into the pod)."""
    endpoint_id: int
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int


class EndpointMetricsMap:
    """Invariant: an entry exists exactly while its endpoint does (the datapath counts only
    into existing entries), so a reused endpoint id starts from zero."""

    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / EP_PIN_NAME, ct.c_uint32, EndpointMetricsValue, percpu=True)

    def create(self, endpoint_id: int) -> None:
        """A zeroed entry for ENDPOINT_ID; an existing one keeps its counts (a resync)."""
        self.map.insert_zeroed(ct.c_uint32(endpoint_id))

    def delete(self, endpoint_id: int) -> bool:
        return self.map.delete(ct.c_uint32(endpoint_id))

    def all(self) -> list[EndpointCounter]:
        out = []
        for key in list(self.map.keys()):
            per_cpu = self.map.get_percpu(key)
            if per_cpu:
                out.append(EndpointCounter(key.value, *(sum(getattr(v, f) for v in per_cpu)
                                                        for f, _ in EndpointMetricsValue._fields_)))
        return out

    def close(self) -> None:
        self.map.close()
