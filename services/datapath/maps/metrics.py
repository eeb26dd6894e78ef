"""cap_metrics: per-CPU packet/byte counters by (direction, reason); cap_ep_metrics: per-CPU
packet/byte counters per endpoint. Owner: endpointd.

Must match struct metrics_value and struct ep_metrics in bpf/lib/metrics.h; the cap_metrics
index is direction << 8 | reason, the cap_ep_metrics index the endpoint id.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from services.datapath.numbers import METRIC_EGRESS, METRIC_INGRESS
from services.datapath import bpfsys
from services.datapath.pinned import MapError, PinnedMap

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


BPF_MAP_TYPE_PERCPU_ARRAY = 6


def drop_old_layout(bpf_root: Path) -> bool:
    """Before lxc.c compiles: unpin per-endpoint counters that are not a per-CPU array (older
    versions kept them in a per-CPU hash). Whether they went. Their counts start again from
    zero, as after a node's first start."""
    path = bpf_root / EP_PIN_NAME
    if not path.exists():
        return False
    fd = bpfsys.obj_get(str(path))
    try:
        kind = bpfsys.map_info(fd).type
    finally:
        os.close(fd)
    if kind == BPF_MAP_TYPE_PERCPU_ARRAY:
        return False
    path.unlink()
    return True


class EndpointMetricsMap:
    """Per-CPU counters at each endpoint id (an array: every id up to the endpoint map's size
    has an entry). Invariant: an id's counters are zero while no endpoint holds it (the
    datapath counts only endpoints' packets, and delete() zeroes an endpoint's when it goes),
    so a reused id starts from zero. An endpoint that has neither sent nor received yet reads
    as zero, as an id no endpoint holds."""

    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / EP_PIN_NAME, ct.c_uint32, EndpointMetricsValue, percpu=True)
        self.size = bpfsys.map_info(self.map.fd).max_entries

    def _key(self, endpoint_id: int) -> ct.c_uint32:
        if not 0 < endpoint_id < self.size:
            raise MapError(errno.ERANGE, f"endpoint id {endpoint_id} is outside 1..{self.size - 1} ({EP_PIN_NAME})")
        return ct.c_uint32(endpoint_id)

    def create(self, endpoint_id: int) -> None:
        """Check ENDPOINT_ID has counters. They exist already (zero, or the endpoint's own
        on a resync, which keeps them)."""
        self._key(endpoint_id)

    def delete(self, endpoint_id: int) -> bool:
        """Zero ENDPOINT_ID's counters; whether there were any."""
        had = self.read(endpoint_id) != EndpointCounter(endpoint_id, 0, 0, 0, 0)
        self.map.put_zero(self._key(endpoint_id))
        return had

    def read(self, endpoint_id: int) -> EndpointCounter:
        per_cpu = self.map.get_percpu(self._key(endpoint_id))
        return EndpointCounter(endpoint_id, *(sum(getattr(v, f) for v in per_cpu)
                                              for f, _ in EndpointMetricsValue._fields_))

    def all(self) -> list[EndpointCounter]:
        """The counters of every id that has any (see the class's invariant)."""
        out = []
        for endpoint_id in range(1, self.size):
            c = self.read(endpoint_id)
            if c.rx_packets or c.tx_packets:
                out.append(c)
        return out

    def close(self) -> None:
        self.map.close()
