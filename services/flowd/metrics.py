"""Flow metrics under Hubble's names (hubble_flows_processed_total, hubble_drop_total,
hubble_policy_verdicts_total, hubble_lost_events_total), on the service's registry, and
capillary_flow_export_delay_seconds: from an event leaving the datapath to its flow going
out on NATS (observed once per batch, for its oldest event: the batch's worst case)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from services.datapath.numbers import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, POLICY_MATCH_NAMES, TRACE_NAMES
from services.flowd.filters import protocol
from services.flowd.metadata import UNKNOWN_RULE_KIND

TYPE_NAMES = {EVENT_DROP: "Drop", EVENT_TRACE: "Trace", EVENT_POLICY_VERDICT: "PolicyVerdict"}
PROTOCOL_LABELS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMPv4", "sctp": "SCTP"}
ATTRIBUTION_KEYS = tuple(f"{d}_{a}_by" for d in ("ingress", "egress") for a in ("allowed", "denied"))
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class FlowMetrics:
    processed: Counter
    drops: Counter
    verdicts: Counter
    delay: Histogram
    unattributed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "FlowMetrics":
        return cls(
            processed=Counter("hubble_flows_processed", "Flows processed",
                              ["type", "subtype", "verdict"], registry=registry),
            drops=Counter("hubble_drop", "Packets dropped", ["reason", "protocol"], registry=registry),
            verdicts=Counter("hubble_policy_verdicts", "Policy verdicts",
                             ["direction", "match", "action"], registry=registry),
            delay=Histogram("capillary_flow_export_delay_seconds", "From a datapath event to its flow "
                            "published on NATS (the oldest event of each batch)", buckets=DELAY_BUCKETS,
                            registry=registry),
            unattributed=Counter("capillary_flows_unattributed", "Flows published with a policy rule "
                                 "flowd could not resolve, even after fetching the rules (kind Unknown)",
                                 registry=registry),
        )

    def children(self, flow: dict) -> tuple:
        """The counters FLOW increments (prometheus children: the flow builder keeps them
        with the flow's template and counts a whole batch at once)."""
        event = flow.get("event_type", {})
        kind = event.get("type")
        subtype = TRACE_NAMES.get(event.get("sub_type"), "") if kind == EVENT_TRACE else ""
        out = [self.processed.labels(TYPE_NAMES.get(kind, "Unknown"), subtype, flow["verdict"])]
        if kind == EVENT_DROP:
            proto = PROTOCOL_LABELS.get(protocol(flow) or "", "Unknown")
            out.append(self.drops.labels(flow.get("drop_reason_desc", ""), proto))
        elif kind == EVENT_POLICY_VERDICT:
            match = POLICY_MATCH_NAMES.get(flow.get("policy_match_type"), "unknown").lower()
            out.append(self.verdicts.labels(flow["traffic_direction"].lower(), match, flow["verdict"].lower()))
        if any(rule.get("kind") == UNKNOWN_RULE_KIND for key in ATTRIBUTION_KEYS for rule in flow.get(key, ())):
            out.append(self.unattributed)
        return tuple(out)

    def observe(self, flow: dict) -> None:
        for child in self.children(flow):
            child.inc()


class LostCollector:
    """hubble_lost_events_total{source}, read at scrape time (the ring's count lives in BPF)."""

    def __init__(self, lost_by_source: Callable[[], dict[str, int]]) -> None:
        self.lost_by_source = lost_by_source

    def collect(self):
        family = CounterMetricFamily("hubble_lost_events", "Events lost, by where", labels=["source"])
        for source, value in sorted(self.lost_by_source().items()):
            family.add_metric([source], value)
        return [family]
