"""Counters add up under load from two CPUs: one UDP connection's two directions sent at the
same time, one side pinned to each CPU, through the real programs. Every packet is counted
once in the per-connection counts (each direction's in its own line of the conntrack
entry), in each pod's per-endpoint counts (cap_ep_metrics, per CPU) and in the node's
redirect counter, and each direction counted what its side sent."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.datapath.maps.conntrack import ConntrackMap, CtKey
from services.datapath.maps.metrics import EndpointMetricsMap, MetricsMap
from services.datapath.numbers import METRIC_EGRESS, REASON_REDIRECT_PEER
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.wait import wait_for

PACKETS = 50_000             # each way
PAYLOAD = 32
FRAME = 14 + 20 + 8 + PAYLOAD  # skb->len at tc: Ethernet + IPv4 + UDP + payload
PORT_A, PORT_B = 31001, 31002

# Bind, say "ready", (a: send the connection's first datagram before that), wait for "go",
# send PACKETS datagrams, say "done", and keep the socket open until killed. Both ends are
# bound before any load and stay bound after it, so no datagram meets a closed port (the
# ICMP error would be one more packet).
SENDER = """
import socket, sys
me, port, peer, peer_port, count, first = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, port))
data = bytes(%d)
if first:
    s.sendto(data, (peer, peer_port))
print("ready", flush=True)
sys.stdin.readline()
for _ in range(count):
    s.sendto(data, (peer, peer_port))
print("done", flush=True)
sys.stdin.readline()
""" % PAYLOAD


def sender(netns: str, cpu: int, me: str, port: int, peer: str, peer_port: int, first: bool) -> subprocess.Popen:
    argv = ["nsenter", f"--net={netns}", "--", "taskset", "-c", str(cpu), sys.executable, "-c", SENDER,
            me, str(port), peer, str(peer_port), str(PACKETS), "1" if first else "0"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def connection_key(a: str, b: str) -> CtKey:
    key = CtKey(protocol=socket.IPPROTO_UDP, sport=socket.htons(PORT_A), dport=socket.htons(PORT_B))
    key.saddr[:] = ipaddress.IPv4Address(a).packed
    key.daddr[:] = ipaddress.IPv4Address(b).packed
    return key


def connection_packets(root: Path, key: CtKey) -> int:
    table = ConntrackMap(root)
    try:
        return table.counts(key)[0]
    finally:
        table.close()


def counts(root: Path, ids: dict[str, int], key: CtKey) -> dict:
    endpoints, metrics, table = EndpointMetricsMap(root), MetricsMap(root), ConntrackMap(root)
    try:
        return {"ep": {pod: endpoints.read(i) for pod, i in ids.items()}, "ct": table.ways(key),
                "redirected": metrics.read(METRIC_EGRESS, REASON_REDIRECT_PEER).packets}
    finally:
        for m in (endpoints, metrics, table):
            m.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_counters_add_up_when_both_directions_run_on_two_cpus(node):
    node.apply(docs(namespace_doc("load"), pod_doc("load", "a"), pod_doc("load", "b")))
    procs = []
    try:
        pods = node.pods()
        a, b = (pods[f"load/{p}"] for p in ("a", "b"))
        ip_a, ip_b = a["status"]["podIP"], b["status"]["podIP"]
        ids = {"a": a["status"]["endpointID"], "b": b["status"]["endpointID"]}
        root, key = Path(node.bpf_root), connection_key(ip_a, ip_b)
        procs.append(sender(b["spec"]["netns"], 1, ip_b, PORT_B, ip_a, PORT_A, first=False))
        procs.append(sender(a["spec"]["netns"], 0, ip_a, PORT_A, ip_b, PORT_B, first=True))
        wait_for(lambda: connection_packets(root, key) == 1, "the connection's entry")
        before = counts(root, ids, key)
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout.readline().strip() == "done"
        after = counts(root, ids, key)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        node.cli("delete", "namespace", "load")
    for pod in ("a", "b"):
        old, new = before["ep"][pod], after["ep"][pod]
        assert (new.tx_packets - old.tx_packets, new.rx_packets - old.rx_packets) == (PACKETS, PACKETS), pod
        assert (new.tx_bytes - old.tx_bytes, new.rx_bytes - old.rx_bytes) == (PACKETS * FRAME, PACKETS * FRAME), pod
    shares = [(p1 - p0, b1 - b0) for (p0, b0), (p1, b1) in zip(before["ct"], after["ct"])]
    assert sum(p for p, _ in shares) == 2 * PACKETS and sum(b for _, b in shares) == 2 * PACKETS * FRAME
    assert shares[0] == (PACKETS, PACKETS * FRAME) and shares[1] == (PACKETS, PACKETS * FRAME)
    assert after["redirected"] - before["redirected"] >= 2 * PACKETS
