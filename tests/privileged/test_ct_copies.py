"""An established connection's packets are delivered from what its conntrack entry copied of
the endpoint map (struct ct_way in bpf/lib/conntrack.h), and only while the endpoint map is
the same: after any change through its owner the next packet reads the endpoints again, so
a moved destination gets the packet at its new place and a source address that moved to
another device is dropped there (anti-spoofing). from_container, compiled as a node compiles
it, runs in the kernel's test loop (BPF_PROG_TEST_RUN) on the loopback device, the sender's
"lxc" device here. Also: a packet finds its connection whichever of its two keys conntrack
looks up first."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest

from services.datapath import bpfsys, clock, loader
from services.datapath.maps.conntrack import ConntrackMap, CtEntry, CtKey
from services.datapath.maps.endpoints import Endpoint, EndpointMap
from services.datapath.maps.metrics import EndpointMetricsMap
from services.datapath.numbers import CT_SEEN_REPLY
from services.runtime.config import DatapathConfig, NodeConfig

CLIENT, SERVER = "10.237.0.2", "10.237.0.3"
SPORT, DPORT = 40000, 5201
LOOPBACK = 1                   # the test loop's device
TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
FRAME = 64


def packet(src: str, dst: str, sport: int = SPORT, dport: int = DPORT) -> bytes:
    """An Ethernet + IPv4 + TCP ACK frame of a connection's later packet."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, FRAME - 14, 0, 0x4000, 64, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x10, 65535, 0, 0)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + header + tcp
    return frame + bytes(FRAME - len(frame))


def server(pod_mac: str = "04:00:00:00:00:03", ifindex: int = LOOPBACK) -> Endpoint:
    return Endpoint(SERVER, ifindex, 1003, 3, "02:00:00:00:00:03", pod_mac)


def client(ifindex: int = LOOPBACK) -> Endpoint:
    return Endpoint(CLIENT, ifindex, 1002, 2, "02:00:00:00:00:02", "04:00:00:00:00:02")


def connection_key(src: str = CLIENT, dst: str = SERVER, sport: int = SPORT, dport: int = DPORT) -> CtKey:
    key = CtKey(protocol=6, sport=socket.htons(sport), dport=socket.htons(dport))
    key.saddr[:] = ipaddress.IPv4Address(src).packed
    key.daddr[:] = ipaddress.IPv4Address(dst).packed
    return key


@pytest.fixture
def node():
    """from_container's fd, the endpoint map and the conntrack map of a node with the two
    endpoints and their established connection."""
    root = Path(f"/sys/fs/bpf/capillary-ct-copies-test-{os.getpid()}")
    config = NodeConfig(podCIDR="10.237.0.0/16", datapath=DatapathConfig(bpfRoot=str(root)))
    try:
        loaded = loader.compile_source("lxc.c", config)
        endpoints, conntrack, counters = EndpointMap(root), ConntrackMap(root), EndpointMetricsMap(root)
        for ep in (client(), server()):
            endpoints.upsert(ep)
            counters.create(ep.endpoint_id)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        conntrack.put(connection_key(), CtEntry(created=now, last_seen=now, flags=CT_SEEN_REPLY),
                      packets=1, size=FRAME)
        yield loaded.program_fd("from_container"), endpoints, conntrack, counters
        for m in (endpoints, conntrack, counters):
            m.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def send(fd: int) -> tuple[int, str]:
    """(verdict, destination MAC) of one request packet through from_container."""
    verdict, out = bpfsys.run_once(fd, packet(CLIENT, SERVER))
    return verdict, ":".join(f"{b:02x}" for b in out[:6])


def test_packets_go_by_the_copy_until_the_endpoint_map_changes(node):
    fd, endpoints, conntrack, counters = node
    assert send(fd) == (TC_ACT_REDIRECT, "04:00:00:00:00:03")     # reads the endpoints, copies them
    way = conntrack.map.get(connection_key()).way[0]
    assert (way.gen, way.from_ifindex, way.to_ifindex, way.to_endpoint) == \
        (endpoints.generation(), LOOPBACK, LOOPBACK, 3)
    assert send(fd) == (TC_ACT_REDIRECT, "04:00:00:00:00:03")     # by the copy

    endpoints.upsert(server(pod_mac="04:00:00:00:00:33"))
    assert send(fd) == (TC_ACT_REDIRECT, "04:00:00:00:00:33")
    assert send(fd) == (TC_ACT_REDIRECT, "04:00:00:00:00:33")

    # Every packet counted once, whichever way it went.
    assert conntrack.ways(connection_key())[0] == (1 + 4, (1 + 4) * FRAME)
    by_id = {c.endpoint_id: c for c in counters.all()}
    assert (by_id[2].tx_packets, by_id[3].rx_packets) == (4, 4)


def test_a_source_address_moved_to_another_device_is_dropped(node):
    fd, endpoints, _, _ = node
    assert send(fd)[0] == TC_ACT_REDIRECT
    assert send(fd)[0] == TC_ACT_REDIRECT
    endpoints.upsert(client(ifindex=LOOPBACK + 1000))
    assert send(fd)[0] == TC_ACT_SHOT


def test_a_deleted_destination_gets_nothing(node):
    fd, endpoints, _, _ = node
    assert send(fd)[0] == TC_ACT_REDIRECT
    assert send(fd)[0] == TC_ACT_REDIRECT
    endpoints.delete(SERVER)
    assert send(fd)[0] == TC_ACT_SHOT          # an address of the pod CIDR no endpoint holds


@pytest.mark.parametrize("sport, dport", [(SPORT, DPORT), (DPORT, SPORT), (SPORT, SPORT)],
                         ids=["opened-from-the-higher-port", "opened-from-the-lower-port", "same-ports"])
def test_requests_and_replies_find_their_connection_whichever_key_is_looked_up_first(node, sport, dport):
    """ct_find looks the reverse key up first when the source port is the lower one: each
    way's packets still reach their own entry's way, whatever the ports."""
    fd, _, conntrack, _ = node
    conntrack.flush()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    key = connection_key(sport=sport, dport=dport)
    conntrack.put(key, CtEntry(created=now, last_seen=now, flags=CT_SEEN_REPLY), packets=1, size=FRAME)
    for _ in range(3):
        assert bpfsys.run_once(fd, packet(CLIENT, SERVER, sport, dport))[0] == TC_ACT_REDIRECT
    for _ in range(2):
        assert bpfsys.run_once(fd, packet(SERVER, CLIENT, dport, sport))[0] == TC_ACT_REDIRECT
    assert conntrack.ways(key) == [(1 + 3, (1 + 3) * FRAME), (2, 2 * FRAME)]
    assert len(conntrack.all()) == 1


def test_a_packet_whose_tuple_opened_a_connection_each_way_counts_once(node):
    """The same two ports opened a connection each way (the second by a bare SYN): a packet
    counts to exactly one of them, the reply's when its ports say reply (as Cilium)."""
    fd, _, conntrack, _ = node
    conntrack.flush()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    forward, backward = connection_key(), connection_key(SERVER, CLIENT, DPORT, SPORT)
    for key in (forward, backward):
        conntrack.put(key, CtEntry(created=now, last_seen=now, flags=CT_SEEN_REPLY))
    assert bpfsys.run_once(fd, packet(SERVER, CLIENT, DPORT, SPORT))[0] == TC_ACT_REDIRECT
    assert conntrack.ways(forward) == [(0, 0), (1, FRAME)]
    assert conntrack.ways(backward) == [(0, 0), (0, 0)]


def test_conntrack_stamps_are_the_monotonic_clock_within_a_tick(node):
    """The programs read conntrack's clock from jiffies, calibrated when they were compiled
    (services/datapath/clock.py). The stamps they write agree with CLOCK_MONOTONIC, which
    the sweep and the tests compare them with, to within a tick (4 ms at HZ=250; 10 ms
    allows HZ=100), and an entry's lifetime ends when CLOCK_MONOTONIC says it does."""
    if clock.calibration() is not None:          # else the coarse clock, held to the same bound
        assert any(flag.startswith("-DCT_CLOCK_JIFFIES=") for flag in loader.cflags(NodeConfig()))
    fd, _, conntrack, _ = node
    tick, lifetime = 10_000_000, 21600 * 10**9          # CT_LIFETIME_TCP
    for _ in range(3):
        # last_seen is moved on by a packet once it is a second old (CT_TOUCH_NS).
        conntrack.flush()
        old = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 2 * 10**9
        conntrack.put(connection_key(), CtEntry(created=old, last_seen=old, flags=CT_SEEN_REPLY))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert bpfsys.run_once(fd, packet(CLIENT, SERVER))[0] == TC_ACT_REDIRECT
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert before - tick <= conntrack.map.get(connection_key()).last_seen <= after + tick
        time.sleep(0.05)

    for idle, verdict in ((lifetime - 50_000_000, TC_ACT_REDIRECT),    # still live
                          (lifetime + 50_000_000, TC_ACT_SHOT)):       # expired: a new connection,
        conntrack.flush()                                              # which no policy here allows
        stale = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - idle
        conntrack.put(connection_key(), CtEntry(created=stale, last_seen=stale, flags=CT_SEEN_REPLY))
        assert bpfsys.run_once(fd, packet(CLIENT, SERVER))[0] == verdict
