"""Conntrack through a pod's life and a full table, on a node whose map holds 1024 entries:
a deleted pod's entries go with it, a sweep removes expired and orphaned entries (counted in
status and metrics), and established connections keep their entries while new ones churn
through a full table (an LRU hash, as Cilium's CT maps)."""
import ipaddress
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from services.datapath.maps.conntrack import ConntrackMap, CtEntry, CtKey
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.packets import Client, Sink, run
from tests.support.traffic import Servers, ping, probe
from tests.support.wait import wait_for

CT_SIZE = 1024
ECHO_PORT, SINK_PORT = 8080, 9090


@pytest.fixture(scope="module")
def node(small_ct_node):
    return small_ct_node


@pytest.fixture(scope="module")
def pods(node):
    node.apply(docs(namespace_doc("t"), *(pod_doc("t", p) for p in ("a", "b", "c", "d"))))
    listed = node.pods()
    out = {ref.split("/")[1]: {"ip": p["status"]["podIP"], "netns": p["spec"]["netns"]}
           for ref, p in listed.items() if ref.startswith("t/")}
    servers = Servers()
    try:
        servers.start(out["b"]["netns"], ECHO_PORT)
        yield out
    finally:
        servers.close()


def entries_with(node, ip: str) -> list:
    return [c for c in ConntrackMap(Path(node.bpf_root)).all() if ip in (c.source, c.destination)]


def test_a_deleted_pods_entries_go_with_it(node, pods):
    """A pod given a reused address must not inherit "established" connections."""
    node.apply(pod_doc("t", "tmp"))
    ip, netns = node.pod_ip("t/tmp"), node.netns("t/tmp")
    assert probe(netns, "tcp", pods["b"]["ip"], ECHO_PORT) and probe(netns, "udp", pods["b"]["ip"], ECHO_PORT)
    assert ping(netns, pods["b"]["ip"])
    assert len(entries_with(node, ip)) >= 3
    node.cli("delete", "pod", "t/tmp")
    assert entries_with(node, ip) == []
    assert probe(pods["a"]["netns"], "tcp", pods["b"]["ip"], ECHO_PORT)     # others untouched


def _put(table: ConntrackMap, src: str, dst: str, proto: int, idle_seconds: float) -> CtKey:
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    key = CtKey(protocol=proto)
    key.saddr[:] = ipaddress.IPv4Address(src).packed
    key.daddr[:] = ipaddress.IPv4Address(dst).packed
    key.sport, key.dport = 0x1234, 0x5678
    last = now - int(idle_seconds * 1e9)
    table.put(key, CtEntry(created=last, last_seen=last), packets=1, size=64)
    return key


def _kill_endpointd(node) -> None:
    pid = node.service_pid("endpointd")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (lambda s: s["healthy"] and s.get("pid") not in (None, pid))(node.status()["services"]["endpointd"]),
             "endpointd back")


def test_a_sweep_removes_expired_and_orphaned_entries_and_counts_them(node, pods):
    """Entries of an address no pod holds (a pod deleted while endpointd was down) and
    entries idle past their lifetime go; live ones stay."""
    table = ConntrackMap(Path(node.bpf_root))
    unused = str(ipaddress.IPv4Network(node.pod_cidr)[240])
    orphan = _put(table, unused, pods["b"]["ip"], 6, idle_seconds=0)
    expired = _put(table, "203.0.113.9", pods["b"]["ip"], 17, idle_seconds=120)
    alive = _put(table, "203.0.113.10", pods["b"]["ip"], 17, idle_seconds=0)
    _kill_endpointd(node)                           # a sweep runs at every start
    wait_for(lambda: table.map.get(orphan) is None and table.map.get(expired) is None, "the sweep")
    assert table.map.get(alive) is not None
    counters = node.status()["services"]["endpointd"]["counters"]
    assert counters["conntrack_gc_orphaned"] >= 1 and counters["conntrack_gc_expired"] >= 1
    assert counters["conntrack_capacity"] == CT_SIZE and counters["conntrack_gc_runs"] >= 1
    metrics = node.metrics("endpointd")
    assert 'capillary_conntrack_gc_deleted_total{reason="orphaned"}' in metrics
    assert f"capillary_conntrack_capacity {float(CT_SIZE)}" in metrics
    table.map.delete(alive)


def test_established_connections_survive_a_full_table(node, pods):
    """a's connection to b outlives a policy that now closes b: its entry carries it. New
    flows from c to d overflow the table four times over; a's connection keeps working
    through all of it, because an LRU table evicts idle entries, not used ones. Without
    its entry (removed at the end) the same connection is cut at once."""
    a, b = pods["a"], pods["b"]
    sink = Sink(pods["d"]["netns"], SINK_PORT)
    client = Client(a["netns"], b["ip"], ECHO_PORT)
    try:
        assert client.echo("before")
        # Closed both ways: without the entry, neither a's next segment nor b's retransmission
        # of an echo whose ACK it missed may open the connection again (b's packet would make
        # an entry of its own, and a's segments its replies).
        node.apply(yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": "b-closed", "namespace": "t"},
                                   "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                                            "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}}))
        assert not probe(a["netns"], "tcp", b["ip"], ECHO_PORT)      # new connections: denied
        # The LRU hash takes free slots per CPU and puts a CPU's new entries on its LRU list
        # only when that CPU next takes slots, so entries made on a CPU that makes no more stay
        # put. All batches are sent from one CPU: each flushes the one before.
        cpu = str(min(os.sched_getaffinity(0)))
        for batch in range(16):
            run(pods["c"]["netns"], "churn", pods["d"]["ip"], str(SINK_PORT), str(20000 + batch * 256), "256", cpu)
            assert client.echo(f"batch-{batch}"), f"the established connection broke after batch {batch}"
        table = ConntrackMap(Path(node.bpf_root)).all()
        # Full: the first batches' idle entries were evicted to make room (an LRU hash keeps
        # some free slots per CPU, so it evicts before its last slot is used).
        assert not [c for c in table if c.source == pods["c"]["ip"] and c.sport < 20256]
        assert len(table) < CT_SIZE
        # a's connection (each echo is a few packets each way), not an earlier probe's entry
        assert [c for c in table if (c.source, c.destination, c.dport) == (a["ip"], b["ip"], ECHO_PORT)
                and c.packets >= 2 * 17]
        assert ConntrackMap(Path(node.bpf_root)).delete_address(a["ip"]) >= 1
        assert not client.echo("without-its-entry")
    finally:
        client.close()
        sink.close()
        node.cli("delete", "networkpolicy", "b-closed", "-n", "t")
