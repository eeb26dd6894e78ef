"""flowd's Prometheus metrics carry Hubble's names and labels, and its context options."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.datapath.numbers import DROP_INVALID, EVENT_DROP, TRACE_TO_STACK
from services.flowd.metrics import FlowMetrics, LostCollector
from services.wire.hubble_options import parse_metric, parse_metrics
from tests.unit.flowdata import A, WORLD_IP, event, packet, tcp, udp
from tests.unit.test_flow_filters import DROP_AB, PING_BA, TCP_AB, UDP_OUT, VERDICT_AB, flow

SYN_ACK_BA = flow(event(packet(A, A, 6, tcp(80, 41234, 0x12))))
TCP_OUT = flow(event(packet(A, WORLD_IP, 6, tcp(41000, 443, 2)), subtype=TRACE_TO_STACK, dst_identity=2))
BAD_OUT = flow(event(packet(A, WORLD_IP, 17, udp(5001, 53)), EVENT_DROP, DROP_INVALID, dst_identity=2))


def observe(*flows, metrics=None):
    registry = CollectorRegistry()
    m = FlowMetrics.create(registry, parse_metrics(metrics) if metrics is not None else None)
    for f in flows:
        m.observe(f)
    return registry.get_sample_value


def test_flows_drops_and_verdicts_are_counted_with_hubbles_labels():
    value = observe(TCP_AB, TCP_AB, DROP_AB, VERDICT_AB, PING_BA)
    assert value("hubble_flows_processed_total", {"protocol": "TCP", "type": "Trace", "subtype": "from-endpoint",
                                                  "verdict": "FORWARDED"}) == 2
    assert value("hubble_flows_processed_total", {"protocol": "ICMPv4", "type": "Trace", "subtype": "to-endpoint",
                                                  "verdict": "FORWARDED"}) == 1
    assert value("hubble_flows_processed_total", {"protocol": "TCP", "type": "Drop", "subtype": "",
                                                  "verdict": "DROPPED"}) == 1
    assert value("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "TCP"}) == 1
    assert value("hubble_policy_verdicts_total", {"direction": "ingress", "match": "none",
                                                  "action": "dropped"}) == 1


def test_tcp_flags_ports_and_icmp():
    value = observe(TCP_AB, SYN_ACK_BA, DROP_AB, PING_BA, UDP_OUT)
    assert value("hubble_tcp_flags_total", {"flag": "SYN", "family": "IPv4"}) == 1        # the drop is not
    assert value("hubble_tcp_flags_total", {"flag": "SYN-ACK", "family": "IPv4"}) == 1
    assert value("hubble_port_distribution_total", {"protocol": "TCP", "port": "80"}) == 1
    assert value("hubble_port_distribution_total", {"protocol": "UDP", "port": "53"}) == 1
    assert value("hubble_port_distribution_total", {"protocol": "TCP", "port": "81"}) is None   # dropped
    assert value("hubble_icmp_total", {"family": "IPv4", "type": "EchoRequest"}) == 1


def test_flows_to_world_count_policy_drops_unless_any_drop():
    value = observe(TCP_AB, UDP_OUT, TCP_OUT, BAD_OUT)
    assert value("hubble_flows_to_world_total", {"protocol": "UDP", "verdict": "FORWARDED"}) == 1
    assert value("hubble_flows_to_world_total", {"protocol": "TCP", "verdict": "FORWARDED"}) == 1
    assert value("hubble_flows_to_world_total", {"protocol": "UDP", "verdict": "DROPPED"}) is None
    value = observe(UDP_OUT, BAD_OUT, metrics=["flows-to-world:any-drop;port"])
    assert value("hubble_flows_to_world_total", {"protocol": "UDP", "verdict": "DROPPED", "port": "53"}) == 1
    assert value("hubble_flows_processed_total", {"protocol": "UDP", "type": "Drop", "subtype": "",
                                                  "verdict": "DROPPED"}) is None       # not enabled


def test_context_options_add_source_destination_and_listed_labels():
    value = observe(TCP_AB, UDP_OUT, metrics=[
        "flow:sourceContext=pod;destinationContext=namespace|ip;labelsContext=source_app,traffic_direction"])
    assert value("hubble_flows_processed_total", {
        "source": "x/a", "destination": "x", "source_app": "a", "traffic_direction": "egress",
        "protocol": "TCP", "type": "Trace", "subtype": "from-endpoint", "verdict": "FORWARDED"}) == 1
    assert value("hubble_flows_processed_total", {
        "source": "x/a", "destination": WORLD_IP, "source_app": "a", "traffic_direction": "egress",
        "protocol": "UDP", "type": "Trace", "subtype": "to-stack", "verdict": "FORWARDED"}) == 1
    value = observe(UDP_OUT, metrics=["drop", "icmp:destinationContext=identity|reserved-identity",
                                      "tcp:sourceContext=workload|pod-name"])
    assert value("hubble_drop_total", {"reason": "x", "protocol": "UDP"}) is None


@pytest.mark.parametrize("text, named", [
    ("dns", "unknown metric 'dns'"), ("flow:sourceContext=dns", "'dns' is not one of"),
    ("flow:labelsContext=source_ip,source_ip", "twice"), ("tcp:port", "unknown option 'port'"),
    ("flow:sourceContext", "needs a value"),
])
def test_bad_options_are_named(text, named):
    with pytest.raises(ValueError, match=named):
        parse_metric(text)


def test_lost_events_by_source():
    registry = CollectorRegistry()
    registry.register(LostCollector(lambda: {"perf_event_ring_buffer": 5, "observer_events_queue": 0}))
    assert registry.get_sample_value("hubble_lost_events_total", {"source": "perf_event_ring_buffer"}) == 5
    assert registry.get_sample_value("hubble_lost_events_total", {"source": "observer_events_queue"}) == 0
