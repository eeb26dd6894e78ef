"""flowd's Prometheus metrics carry Hubble's names and labels."""
from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.flowd.metrics import FlowMetrics, LostCollector
from tests.unit.test_flow_filters import DROP_AB, PING_BA, TCP_AB, VERDICT_AB


def test_flows_drops_and_verdicts_are_counted_with_hubbles_labels():
    registry = CollectorRegistry()
    metrics = FlowMetrics.create(registry)
    for f in (TCP_AB, TCP_AB, DROP_AB, VERDICT_AB, PING_BA):
        metrics.observe(f)
    value = registry.get_sample_value
    assert value("hubble_flows_processed_total", {"type": "Trace", "subtype": "from-endpoint",
                                                  "verdict": "FORWARDED"}) == 2
    assert value("hubble_flows_processed_total", {"type": "Trace", "subtype": "to-endpoint",
                                                  "verdict": "FORWARDED"}) == 1
    assert value("hubble_flows_processed_total", {"type": "Drop", "subtype": "", "verdict": "DROPPED"}) == 1
    assert value("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "TCP"}) == 1
    assert value("hubble_policy_verdicts_total", {"direction": "ingress", "match": "none",
                                                  "action": "dropped"}) == 1


def test_lost_events_by_source():
    registry = CollectorRegistry()
    registry.register(LostCollector(lambda: {"perf_event_ring_buffer": 5, "observer_events_queue": 0}))
    assert registry.get_sample_value("hubble_lost_events_total", {"source": "perf_event_ring_buffer"}) == 5
    assert registry.get_sample_value("hubble_lost_events_total", {"source": "observer_events_queue"}) == 0
