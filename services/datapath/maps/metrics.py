"""cap_metrics: per-CPU packet/byte counters by (direction, reason); cap_ep_metrics: per-CPU
packet/byte counters per endpoint, EP_BLOCK endpoints to an element, with cap_ep_metrics_base
(what each id read when its last endpoint went). Owner: endpointd.

Must match struct metrics_value, struct ep_metrics and struct ep_metrics_block in
bpf/lib/metrics.h; the cap_metrics index is direction << 8 | reason, endpoint id N is slot
N % EP_BLOCK of cap_ep_metrics element N // EP_BLOCK and element N of cap_ep_metrics_base.
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
EP_BASE_PIN_NAME = "ep_metrics_base"
EP_BLOCK = 256              # EP_METRICS_BLOCK


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


class EndpointMetricsBlock(ct.Structure):
    _fields_ = [("ep", EndpointMetricsValue * EP_BLOCK)]


FIELDS = len(EndpointMetricsValue._fields_)


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
    """Before lxc.c compiles: unpin per-endpoint counters in another layout than today's
    blocks (older versions kept them in a per-CPU hash, then at an element an endpoint), and
    their base with them. Whether anything went. Their counts start again from zero, as
    after a node's first start."""
    path, base = bpf_root / EP_PIN_NAME, bpf_root / EP_BASE_PIN_NAME
    if path.exists():
        fd = bpfsys.obj_get(str(path))
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        if (info.type, info.value_size) == (BPF_MAP_TYPE_PERCPU_ARRAY, ct.sizeof(EndpointMetricsBlock)):
            return False
    went = False
    for p in (path, base):
        if p.exists():
            p.unlink()
            went = True
    return went


class EndpointMetricsMap:
    """Per-CPU counters at each endpoint id (every id up to the endpoint map's size has a
    slot). The datapath only adds to them; an id's counts are its counters less its base.
    Invariant: an id's counts are zero while no endpoint holds it (the datapath counts only
    endpoints' packets, and delete() moves the base up to the counters when an endpoint goes),
    so a reused id starts from zero. An endpoint that has neither sent nor received yet reads
    as zero, as an id no endpoint holds."""

    def __init__(self, bpf_root: Path) -> None:
        self.map = PinnedMap(bpf_root / EP_PIN_NAME, ct.c_uint32, EndpointMetricsBlock, percpu=True)
        try:
            self.base = PinnedMap(bpf_root / EP_BASE_PIN_NAME, ct.c_uint32, EndpointMetricsValue)
        except MapError:
            self.map.close()
            raise
        self.size = bpfsys.map_info(self.base.fd).max_entries

    def _key(self, endpoint_id: int) -> ct.c_uint32:
        if not 0 < endpoint_id < self.size:
            raise MapError(errno.ERANGE, f"endpoint id {endpoint_id} is outside 1..{self.size - 1} ({EP_PIN_NAME})")
        return ct.c_uint32(endpoint_id)

    def _block(self, block: int) -> list[tuple[int, ...]]:
        """The counters of each slot of BLOCK, summed over the CPUs."""
        words = self.map.get_percpu_words(ct.c_uint32(block))
        if words is None:
            raise MapError(errno.ENOENT, f"no element {block} in {EP_PIN_NAME}")
        per_cpu = self.map.words_per_cpu()
        sums = [sum(words[i::per_cpu]) for i in range(EP_BLOCK * FIELDS)]
        return [tuple(sums[slot * FIELDS:(slot + 1) * FIELDS]) for slot in range(EP_BLOCK)]

    def _counts(self, endpoint_id: int, counted: tuple[int, ...]) -> EndpointCounter:
        base = self.base.get(ct.c_uint32(endpoint_id))
        if base is None:
            raise MapError(errno.ENOENT, f"no base for endpoint id {endpoint_id} in {EP_BASE_PIN_NAME}")
        return EndpointCounter(endpoint_id, *(c - getattr(base, f) for c, (f, _) in
                                              zip(counted, EndpointMetricsValue._fields_)))

    def create(self, endpoint_id: int) -> None:
        """Check ENDPOINT_ID has counters. They exist already (zero, or the endpoint's own
        on a resync, which keeps them)."""
        self._key(endpoint_id)

    def delete(self, endpoint_id: int) -> bool:
        """Zero ENDPOINT_ID's counts; whether there were any."""
        key = self._key(endpoint_id)
        counted = self._block(endpoint_id // EP_BLOCK)[endpoint_id % EP_BLOCK]
        had = self._counts(endpoint_id, counted) != EndpointCounter(endpoint_id, 0, 0, 0, 0)
        self.base.update(key, EndpointMetricsValue(*counted))
        return had

    def read(self, endpoint_id: int) -> EndpointCounter:
        self._key(endpoint_id)
        return self._counts(endpoint_id, self._block(endpoint_id // EP_BLOCK)[endpoint_id % EP_BLOCK])

    def all(self) -> list[EndpointCounter]:
        """The counts of every id that has any (see the class's invariant), each block read
        once."""
        out = []
        for block in range((self.size - 1) // EP_BLOCK + 1):
            for slot, counted in enumerate(self._block(block)):
                endpoint_id = block * EP_BLOCK + slot
                if 0 < endpoint_id < self.size and any(counted):
                    c = self._counts(endpoint_id, counted)
                    if c.rx_packets or c.tx_packets:
                        out.append(c)
        return out

    def close(self) -> None:
        self.map.close()
        self.base.close()
