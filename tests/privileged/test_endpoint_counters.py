"""Per-endpoint counters (cap_ep_metrics) are a per-CPU array at each endpoint id: an id's
counters are the endpoint's own while it lives (a resync keeps them), zero once it went, and
an id outside the array is refused by name. Counters pinned by an older capillary (a per-CPU
hash) are replaced when endpointd compiles lxc.c."""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

import pytest

from services.datapath import bpfsys, loader
from services.datapath.maps.metrics import BPF_MAP_TYPE_PERCPU_ARRAY, EP_PIN_NAME, EndpointMetricsMap, \
    EndpointMetricsValue
from services.datapath.pinned import MapError, possible_cpus
from services.runtime.config import DatapathConfig, MapSizes, NodeConfig
from tests.support.bpffs import scratch_root

OLD_HASH = """
struct v { u64 rx_packets; u64 rx_bytes; u64 tx_packets; u64 tx_bytes; };
BPF_TABLE_PINNED("percpu_hash", u32, struct v, old_ep, 64, "ROOT/ep_metrics");
"""


@pytest.fixture
def root():
    with scratch_root("ep-counters") as path:
        yield path


def config(root: Path) -> NodeConfig:
    return NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)), maps=MapSizes(endpoints=64))


def set_counts(counters: EndpointMetricsMap, endpoint_id: int, packets: int) -> None:
    """PACKETS received by ENDPOINT_ID, all on the first CPU."""
    shares = (EndpointMetricsValue * possible_cpus())(EndpointMetricsValue(packets, 64 * packets, 0, 0))
    counters.map.update(ct.c_uint32(endpoint_id), shares)


def test_an_endpoints_counters_live_and_go_with_it(root):
    loader.compile_source("lxc.c", config(root))
    counters = EndpointMetricsMap(root)
    try:
        assert counters.size == 65                      # ids 1..maps.endpoints
        counters.create(7)
        set_counts(counters, 7, 3)
        counters.create(7)                              # a resync keeps them
        assert counters.read(7).rx_packets == 3
        assert [c.endpoint_id for c in counters.all()] == [7]
        assert counters.delete(7)
        assert counters.read(7).rx_packets == 0 and counters.all() == []
        with pytest.raises(MapError, match="endpoint id 65 is outside 1..64"):
            counters.create(65)
    finally:
        counters.close()


def test_endpointd_compile_replaces_per_endpoint_counters_in_a_hash(root):
    from bcc import BPF
    BPF(text=OLD_HASH.replace("ROOT", str(root)).encode()).cleanup()
    loader.pin_programs("lxc.c", config(root), ("from_container",))
    fd = bpfsys.obj_get(str(root / EP_PIN_NAME))
    try:
        assert bpfsys.map_info(fd).type == BPF_MAP_TYPE_PERCPU_ARRAY
    finally:
        os.close(fd)
