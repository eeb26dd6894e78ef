"""Flows under datapath conditions of their own: host-stack mode (to_container delivers), a
ring too small for the traffic, and a flowd restart with events waiting in the ring."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from services.flowd.filters import flow_time
from tests.e2e.flow_model import NONE, forward, reply, settled, shape, verdict
from tests.support.flows import FlowCollector
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe


# ---- host-stack mode: the kernel routes pod to pod, to_container delivers --------------------

def test_host_stack_mode_traces_to_stack_and_to_endpoint(host_stack_node):
    node = host_stack_node
    node.apply(docs(namespace_doc("hs"), pod_doc("hs", "a"), pod_doc("hs", "b")))
    servers, collector = Servers(), FlowCollector(node)
    A, B = "hs/a", "hs/b"
    try:
        servers.start(node.netns(B), 80)
        collector.take()
        assert probe(node.netns(A), "udp", node.pod_ip(B), 80, sport=41000)
        to_stack = lambda src, dst, direction, is_reply: \
            ("trace", "TO_STACK", "FORWARDED", direction, is_reply, src, dst, "UDP")
        # from_container judges both sides and hands the packet to the host stack; the
        # kernel routes it to b's lxc device, where to_container delivers it
        assert sorted(map(shape, collector.take()), key=repr) == sorted(
            forward(A, B, "UDP") + [verdict(NONE, "FORWARDED", "EGRESS", A, B, "UDP"),
                                    verdict(NONE, "FORWARDED", "INGRESS", A, B, "UDP"),
                                    to_stack(A, B, "EGRESS", False)]
            + reply(B, A, "UDP") + [to_stack(B, A, "INGRESS", True)], key=repr)
        # from the host: to_container applies b's ingress policy to a new connection
        assert probe(None, "udp", node.pod_ip(B), 80, sport=41001)
        flows = collector.take()
        assert sorted(map(shape, flows), key=repr) == sorted(
            [verdict(NONE, "FORWARDED", "INGRESS", None, B, "UDP"),
             ("trace", "TO_ENDPOINT", "FORWARDED", "INGRESS", False, None, B, "UDP"),
             ("trace", "FROM_ENDPOINT", "FORWARDED", "INGRESS", True, B, None, "UDP"),
             to_stack(B, None, "INGRESS", True)], key=repr)
        assert {f["source"]["identity"] for f in flows if f["IP"]["source"] != node.pod_ip(B)} == {1}
    finally:
        servers.close()
        collector.close()


# ---- a ring too small for the traffic -------------------------------------------------------

BURST = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    for _ in range(500):
        s.sendto(b"x" * 16, (sys.argv[1], 9))
    n += 500
print(n)
"""


def test_an_overfull_ring_counts_its_losses_and_the_books_still_balance(tiny_ring_node):
    node = tiny_ring_node
    node.apply(docs(namespace_doc("rb"), pod_doc("rb", "a"), pod_doc("rb", "b")))
    a, b = node.netns("rb/a"), node.pod_ip("rb/b")
    collector = FlowCollector(node)
    try:
        assert ping(a, b, count=3)        # aggregation none: every packet, every point
        traces = [f for f in collector.take() if f["event_type"]["type"] == 4]
        assert len(traces) == 12, [shape(f) for f in traces]
    finally:
        collector.close()
    assert settled(node)["lost_ring_full"] == 0
    sent = subprocess.run(["nsenter", f"--net={a}", "--", sys.executable, "-c", BURST, b, "2"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert int(sent) > 1000
    c = settled(node)
    assert c["lost_ring_full"] > 0, c
    assert c["flows_generated"] == c["flows_published"] + c["flows_lost"], c
    assert c["flows_lost"] == c["lost_ring_full"] + c["lost_publish"] + c["lost_undecodable"], c
    assert c["history_overwritten"] > 0, c
    lost = {sample.labels["source"]: sample.value
            for family in text_string_to_metric_families(node.metrics("flowd"))
            for sample in family.samples if sample.name == "hubble_lost_events_total"}
    assert lost["perf_event_ring_buffer"] == c["lost_ring_full"], lost    # 2e+06 in the text
    assert "lost_ring_full=" in node.cli("status").stdout


def test_a_restarted_flowd_reads_what_the_ring_kept_and_still_balances(tiny_ring_node):
    node = tiny_ring_node
    node.apply(docs(namespace_doc("rs"), pod_doc("rs", "a"), pod_doc("rs", "b")))
    a, b = node.netns("rs/a"), node.pod_ip("rs/b")
    collector = FlowCollector(node)
    try:
        collector.take()
        old = node.service_pid("flowd")
        os.kill(old, signal.SIGKILL)
        assert ping(a, b, count=2)        # flowd is down: the events wait in the pinned ring
        status = node.wait_healthy()["services"]["flowd"]
        assert status["pid"] != old
        started = time.time() - status["uptime"]
        flows = collector.take(quiet=1.5)
    finally:
        collector.close()
    # aggregation none: request and reply, leaving one pod and entering the other, twice;
    # and the first request's two policy verdicts
    kinds = sorted((f["event_type"]["type"], f.get("is_reply")) for f in flows)
    assert kinds == [(4, False)] * 4 + [(4, True)] * 4 + [(5, False)] * 2, [shape(f) for f in flows]
    assert min(flow_time(f) for f in flows) < started        # sent before this flowd ran
    c = settled(node)
    assert c["flows_generated"] == c["flows_published"] + c["flows_lost"] and c["flows_lost"] == 0, c
    assert c["flows_published"] == len(flows), c
