"""The Python owner of each map has the same layout as the C struct clang compiles.

bcc turns each map's key and value C types into ctypes classes; we compare those with the
owner modules' own classes field by field (name, offset, size)."""
import ctypes as ct
import os
import shutil

import pytest

from services.datapath import loader
from services.datapath.maps.endpoints import EndpointInfo, EndpointKey
from services.datapath.maps.ipcache import IpcacheInfo, IpcacheKey
from services.datapath.maps.conntrack import CtEntry, CtKey, CtWay
from services.datapath.maps.events import EventStats, FlowEvent
from services.datapath.maps.metrics import EndpointMetricsBlock, EndpointMetricsValue, MetricsValue
from services.datapath.maps.policy import PolicyEntry, PolicyKey
from services.datapath.maps.tunnel import TunnelInfo
from services.runtime.config import DatapathConfig, NodeConfig


# struct flow_event only travels through the ring, whose bcc table knows no struct: a
# throwaway array of it (never pinned) makes bcc hand its layout to us.
LAYOUT_SOURCE = "../tests/privileged/layouts.c"


def layout(cls) -> list[tuple[str, int, int]]:
    return [(name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    # Per process: test runs of other checkouts on this machine use the same bpffs, and one
    # removing (or pinning another layout at) a shared path breaks the other's compile.
    root = f"/sys/fs/bpf/capillary-layout-test-{os.getpid()}"
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=root))
    try:
        sources = ("routed_maps.c", "policyd_maps.c", "flowd_maps.c", "lxc.c", LAYOUT_SOURCE)
        yield {src: loader.compile_source(src, config).bpf for src in sources}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("source,table,key,value", [
    ("lxc.c", "cap_endpoints", EndpointKey, EndpointInfo),
    ("lxc.c", "cap_ipcache", IpcacheKey, IpcacheInfo),
    ("routed_maps.c", "cap_ipcache", IpcacheKey, IpcacheInfo),
    ("routed_maps.c", "cap_tunnel", None, TunnelInfo),
    ("lxc.c", "cap_tunnel", None, TunnelInfo),
    ("lxc.c", "cap_metrics", None, MetricsValue),
    ("lxc.c", "cap_ep_metrics", None, EndpointMetricsBlock),
    ("lxc.c", "cap_ep_metrics_base", None, EndpointMetricsValue),
    ("policyd_maps.c", "cap_policy", PolicyKey, PolicyEntry),
    ("lxc.c", "cap_policy", PolicyKey, PolicyEntry),
    ("lxc.c", "cap_ct", CtKey, CtEntry),
    ("flowd_maps.c", "cap_events_stats", None, EventStats),
    ("lxc.c", "cap_events_stats", None, EventStats),
    (LAYOUT_SOURCE, "layout_flow_event", None, FlowEvent),
])
def test_python_layout_matches_c(compiled, source, table, key, value):
    t = compiled[source][table.encode()]
    if key is not None:
        assert ct.sizeof(t.Key) == ct.sizeof(key)
        assert layout(t.Key) == layout(key)
    leaf = getattr(t, "sLeaf", t.Leaf)          # per-CPU maps: one CPU's value
    assert ct.sizeof(leaf) == ct.sizeof(value)
    assert layout(leaf) == layout(value)


@pytest.mark.parametrize("source", ["routed_maps.c", "lxc.c"])
def test_tunnel_peers_are_ipv4_addresses(compiled, source):
    """cap_tunnel_peers: an IPv4 address -> a u32 (services.datapath.maps.tunnel.TunnelPeersMap)."""
    t = compiled[source][b"cap_tunnel_peers"]
    assert ct.sizeof(t.Key) == ct.sizeof(t.Leaf) == ct.sizeof(ct.c_uint32)


def test_conntrack_ways_match_c(compiled):
    """struct ct_way, nested in struct ct_entry's way[2]: bcc names it, so compare it too."""
    leaf = compiled["lxc.c"][b"cap_ct"].Leaf
    way = leaf._fields_[-1][1]._type_
    assert ct.sizeof(way) == ct.sizeof(CtWay) == 64
    assert layout(way) == layout(CtWay)


def test_endpoint_generation_is_one_u64(compiled):
    table = compiled["lxc.c"][b"cap_endpoints_gen"]
    assert ct.sizeof(table.Leaf) == ct.sizeof(ct.c_uint64)


def test_programs_load_in_both_modes(tmp_path):
    for mode in ("redirect", "host-stack"):
        root = f"/sys/fs/bpf/capillary-load-test-{mode}-{os.getpid()}"
        config = NodeConfig(datapath=DatapathConfig(bpfRoot=root, mode=mode))
        try:
            loader.compile_source("policyd_maps.c", config)
            loaded = loader.compile_source("lxc.c", config)
            assert loaded.program_fd("from_container") > 0
            assert loaded.program_fd("to_container") > 0
        finally:
                shutil.rmtree(root, ignore_errors=True)
