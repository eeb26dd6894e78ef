"""Flows as tests describe them: a flow's shape (what it says, without times and ids) and
the shapes a packet is expected to produce."""
from __future__ import annotations

import time

from services.datapath.numbers import POLICY_MATCH_L3_L4 as L3_L4
from services.datapath.numbers import POLICY_MATCH_L3_ONLY as L3_ONLY
from services.datapath.numbers import POLICY_MATCH_NONE as NONE

__all__ = ["L3_L4", "L3_ONLY", "NONE", "denied_new", "forward", "ref", "reply", "settled", "shape", "verdict"]


def ref(endpoint: dict) -> str | None:
    return f"{endpoint['namespace']}/{endpoint['pod_name']}" if "pod_name" in endpoint else None


def shape(f: dict) -> tuple:
    """What a flow says, without times and ids: kind, point/match/reason, verdict, direction,
    is_reply, source, destination, summary."""
    kind = {1: "drop", 4: "trace", 5: "policy-verdict"}[f["event_type"]["type"]]
    detail = {"trace": f.get("trace_observation_point"), "drop": f.get("drop_reason_desc"),
              "policy-verdict": f.get("policy_match_type")}[kind]
    return (kind, detail, f["verdict"], f["traffic_direction"], f.get("is_reply"), ref(f["source"]),
            ref(f["destination"]), f["Summary"])


def forward(src, dst, summary):
    """A request packet's traces: leaving SRC, delivered into DST."""
    return [("trace", "FROM_ENDPOINT", "FORWARDED", "EGRESS", False, src, dst, summary),
            ("trace", "TO_ENDPOINT", "FORWARDED", "INGRESS", False, src, dst, summary)]


def reply(src, dst, summary):
    """A reply packet's traces: the connection is SRC's ingress and DST's egress."""
    return [("trace", "FROM_ENDPOINT", "FORWARDED", "INGRESS", True, src, dst, summary),
            ("trace", "TO_ENDPOINT", "FORWARDED", "EGRESS", True, src, dst, summary)]


def verdict(match, v, direction, src, dst, summary):
    return ("policy-verdict", match, v, direction, False, src, dst, summary)


def denied_new(src, dst, summary, egress_match, ingress_match, reason):
    """A new connection that SRC's egress lets out and DST's ingress drops."""
    return [("trace", "FROM_ENDPOINT", "FORWARDED", "EGRESS", False, src, dst, summary),
            verdict(egress_match, "FORWARDED", "EGRESS", src, dst, summary),
            verdict(ingress_match, "DROPPED", "INGRESS", src, dst, summary),
            ("drop", reason, "DROPPED", "INGRESS", False, src, dst, summary)]


def settled(node, timeout: float = 60) -> dict:
    """flowd's counters once it has read everything the datapath emitted and drained."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        c = node.status()["services"]["flowd"]["counters"]
        if c["events_read"] == c["events_emitted"] and c["flows_queued"] == 0 and c == last:
            return c
        last = c
        time.sleep(0.5)
    raise AssertionError(f"flowd did not settle: {last}")
