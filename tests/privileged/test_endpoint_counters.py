"""Per-endpoint counters (cap_ep_metrics) are a per-CPU array of blocks of endpoint slots: an
id's counts are the endpoint's own while it lives (a resync keeps them), zero once it went
(its neighbours' counts untouched), and an id outside the array is refused by name. Counters
pinned by an older capillary (a per-CPU hash, or a per-CPU array at an element an endpoint)
are replaced when endpointd compiles lxc.c."""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

import pytest

from services.datapath import bpfsys, loader
from services.datapath.maps.metrics import BPF_MAP_TYPE_PERCPU_ARRAY, EP_BLOCK, EP_PIN_NAME, \
    EndpointMetricsBlock, EndpointMetricsMap
from services.datapath.pinned import MapError, possible_cpus
from services.runtime.config import DatapathConfig, MapSizes, NodeConfig
from tests.support.bpffs import scratch_root

OLD_HASH = """
struct v { u64 rx_packets; u64 rx_bytes; u64 tx_packets; u64 tx_bytes; };
BPF_TABLE_PINNED("percpu_hash", u32, struct v, old_ep, 64, "ROOT/ep_metrics");
"""
OLD_ARRAY = OLD_HASH.replace('"percpu_hash"', '"percpu_array"')


@pytest.fixture
def root():
    with scratch_root("ep-counters") as path:
        yield path


def config(root: Path) -> NodeConfig:
    return NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)), maps=MapSizes(endpoints=64))


def add_counts(counters: EndpointMetricsMap, endpoint_id: int, packets: int, cpu: int = 0) -> None:
    """PACKETS more received by ENDPOINT_ID on CPU, as the datapath counts them."""
    key = ct.c_uint32(endpoint_id // EP_BLOCK)
    blocks = (EndpointMetricsBlock * possible_cpus()).from_buffer_copy(counters.map.get_percpu_words(key).tobytes())
    slot = blocks[cpu].ep[endpoint_id % EP_BLOCK]
    slot.rx_packets += packets
    slot.rx_bytes += 64 * packets
    counters.map.update(key, blocks)


def test_an_endpoints_counters_live_and_go_with_it(root):
    loader.compile_source("lxc.c", config(root))
    counters = EndpointMetricsMap(root)
    cpus = range(min(2, possible_cpus()))
    try:
        assert counters.size == 65                      # ids 1..maps.endpoints
        counters.create(7)
        for cpu in cpus:
            add_counts(counters, 7, 3, cpu)
        add_counts(counters, 8, 5)
        counters.create(7)                              # a resync keeps them
        assert counters.read(7).rx_packets == 3 * len(cpus)
        assert [(c.endpoint_id, c.rx_packets) for c in counters.all()] == [(7, 3 * len(cpus)), (8, 5)]
        assert counters.delete(7)
        assert counters.read(7).rx_packets == 0 and not counters.delete(7)
        assert [(c.endpoint_id, c.rx_bytes) for c in counters.all()] == [(8, 5 * 64)]   # its neighbour's kept
        add_counts(counters, 7, 2)                      # the id reused: counts from zero
        assert counters.read(7).rx_packets == 2
        with pytest.raises(MapError, match="endpoint id 65 is outside 1..64"):
            counters.create(65)
    finally:
        counters.close()


@pytest.mark.parametrize("old", [OLD_HASH, OLD_ARRAY], ids=["percpu_hash", "percpu_array_per_endpoint"])
def test_endpointd_compile_replaces_per_endpoint_counters_in_an_older_layout(root, old):
    from bcc import BPF
    BPF(text=old.replace("ROOT", str(root)).encode()).cleanup()
    loader.pin_programs("lxc.c", config(root), ("from_container",))
    fd = bpfsys.obj_get(str(root / EP_PIN_NAME))
    try:
        info = bpfsys.map_info(fd)
        assert (info.type, info.value_size) == (BPF_MAP_TYPE_PERCPU_ARRAY, ct.sizeof(EndpointMetricsBlock))
    finally:
        os.close(fd)
    counters = EndpointMetricsMap(root)
    try:
        assert counters.all() == []
    finally:
        counters.close()
