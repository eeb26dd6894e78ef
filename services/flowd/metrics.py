"""Flow metrics under Hubble's names and labels, on the service's registry: the metrics
enabled in the node config (hubble.metrics, Hubble's option syntax), each a counter whose
labels are its context labels followed by its own; hubble_lost_events_total always; and
capillary_flow_export_delay_seconds: from an event leaving the datapath to its flow going
out on NATS (observed once per batch, for its oldest event: the batch's worst case).

What each counts, as Hubble does:
- flow: hubble_flows_processed_total{protocol, type, subtype, verdict}, every flow;
- drop: hubble_drop_total{reason, protocol}, every drop;
- policy: hubble_policy_verdicts_total{direction, match, action}, every policy verdict;
- tcp: hubble_tcp_flags_total{flag, family}, forwarded TCP flows: FIN, SYN or SYN-ACK, RST;
- port-distribution: hubble_port_distribution_total{protocol, port}, forwarded flows that
  are no reply, by destination port;
- icmp: hubble_icmp_total{family, type}, ICMP flows by message type;
- flows-to-world: hubble_flows_to_world_total{protocol, verdict[, port]}, flows that are no
  reply to a destination labelled reserved:world; a drop only for "Policy denied" unless
  the any-drop option; with syn-only, TCP flows only when they carry a SYN without ACK.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from services.datapath.numbers import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, POLICY_MATCH_NAMES, TRACE_NAMES
from services.flowd.filters import ports, protocol
from services.flowd.hubble_context import context_values
from services.flowd.metadata import UNKNOWN_RULE_KIND
from services.flowd.packet import ICMP_TYPES
from services.wire.hubble_options import METRICS, MetricSpec

TYPE_NAMES = {EVENT_DROP: "Drop", EVENT_TRACE: "Trace", EVENT_POLICY_VERDICT: "PolicyVerdict"}
PROTOCOL_LABELS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMPv4", "sctp": "SCTP"}
ATTRIBUTION_KEYS = tuple(f"{d}_{a}_by" for d in ("ingress", "egress") for a in ("allowed", "denied"))
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WORLD = "reserved:world"
FAMILY = "IPv4"


def _protocol(flow: dict) -> str:
    return PROTOCOL_LABELS.get(protocol(flow) or "", "Unknown")


def _flow(flow: dict, spec: MetricSpec) -> list[tuple]:
    event = flow.get("event_type", {})
    kind = event.get("type")
    subtype = TRACE_NAMES.get(event.get("sub_type"), "") if kind == EVENT_TRACE else ""
    return [(_protocol(flow), TYPE_NAMES.get(kind, "Unknown"), subtype, flow["verdict"])]


def _drop(flow: dict, spec: MetricSpec) -> list[tuple]:
    if flow.get("event_type", {}).get("type") != EVENT_DROP:
        return []
    return [(flow.get("drop_reason_desc", ""), _protocol(flow))]


def _policy(flow: dict, spec: MetricSpec) -> list[tuple]:
    if flow.get("event_type", {}).get("type") != EVENT_POLICY_VERDICT:
        return []
    match = POLICY_MATCH_NAMES.get(flow.get("policy_match_type"), "unknown").lower()
    return [(flow["traffic_direction"].lower(), match, flow["verdict"].lower())]


def _tcp(flow: dict, spec: MetricSpec) -> list[tuple]:
    flags = (flow.get("l4") or {}).get("TCP", {}).get("flags")
    if flow["verdict"] != "FORWARDED" or not flags:
        return []
    out = [("FIN", FAMILY)] if flags.get("FIN") else []
    if flags.get("SYN"):
        out.append(("SYN-ACK" if flags.get("ACK") else "SYN", FAMILY))
    if flags.get("RST"):
        out.append(("RST", FAMILY))
    return out


def _port_distribution(flow: dict, spec: MetricSpec) -> list[tuple]:
    both = ports(flow)
    if flow["verdict"] != "FORWARDED" or flow.get("is_reply") or not both:
        return []
    return [(_protocol(flow), str(both[1]))]


def _icmp(flow: dict, spec: MetricSpec) -> list[tuple]:
    icmp = (flow.get("l4") or {}).get("ICMPv4")
    if icmp is None:
        return []
    return [(FAMILY, ICMP_TYPES.get(icmp.get("type"), f"Type{icmp.get('type')}"))]


def _to_world(flow: dict, spec: MetricSpec) -> list[tuple]:
    if flow.get("is_reply") or WORLD not in (flow.get("destination") or {}).get("labels", ()):
        return []
    if flow["verdict"] == "DROPPED" and "any-drop" not in spec.flags and \
            flow.get("drop_reason_desc") != "POLICY_DENIED":
        return []
    flags = (flow.get("l4") or {}).get("TCP", {}).get("flags")
    if "syn-only" in spec.flags and flags is not None and not (flags.get("SYN") and not flags.get("ACK")):
        return []
    both = ports(flow)
    port = (str(both[1]) if both else "0",) if "port" in spec.flags else ()
    return [(_protocol(flow), flow["verdict"], *port)]


# metric -> (name without _total, help, its own labels, what a flow counts as)
Values = Callable[[dict, MetricSpec], list[tuple]]
HANDLERS: dict[str, tuple[str, str, tuple[str, ...], Values]] = {
    "flow": ("hubble_flows_processed", "Total number of flows processed",
             ("protocol", "type", "subtype", "verdict"), _flow),
    "drop": ("hubble_drop", "Number of drops", ("reason", "protocol"), _drop),
    "policy": ("hubble_policy_verdicts", "Number of policy verdicts", ("direction", "match", "action"), _policy),
    "tcp": ("hubble_tcp_flags", "TCP flag occurrences", ("flag", "family"), _tcp),
    "port-distribution": ("hubble_port_distribution", "Numbers of packets distributed by destination port",
                          ("protocol", "port"), _port_distribution),
    "icmp": ("hubble_icmp", "Number of ICMP messages", ("family", "type"), _icmp),
    "flows-to-world": ("hubble_flows_to_world", "Total number of flows to reserved:world",
                       ("protocol", "verdict"), _to_world),
}
assert set(HANDLERS) == set(METRICS)


@dataclass
class Handler:
    spec: MetricSpec
    counter: Counter
    values: Values

    def children(self, flow: dict) -> list:
        found = self.values(flow, self.spec)
        if not found:
            return []
        context = context_values(self.spec, flow)
        return [self.counter.labels(*context, *v) for v in found]


@dataclass
class FlowMetrics:
    handlers: list[Handler]
    delay: Histogram
    unattributed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, specs: tuple[MetricSpec, ...] | None = None) -> "FlowMetrics":
        handlers = []
        for spec in specs if specs is not None else tuple(MetricSpec(m) for m in METRICS):
            name, doc, labels, values = HANDLERS[spec.name]
            if "port" in spec.flags:
                labels = (*labels, "port")
            handlers.append(Handler(spec, Counter(name, doc, [*spec.context_labels, *labels], registry=registry),
                                    values))
        return cls(
            handlers=handlers,
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
        out = [child for handler in self.handlers for child in handler.children(flow)]
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
        family = CounterMetricFamily("hubble_lost_events", "Number of lost events", labels=["source"])
        for source, value in sorted(self.lost_by_source().items()):
            family.add_metric([source], value)
        return [family]
