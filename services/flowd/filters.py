"""Which flows a FlowFilter selects. Pure; flowd applies it to its history and
`capillary observe -f` to live flows, so both answer the same question the same way.

Semantics (as `hubble observe`): the values given for one field are alternatives; every
field given must match. --pod / --namespace / --port match either side of the flow.
"""
from __future__ import annotations

import calendar
import time

from services.datapath.numbers import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, TRACE_NAMES
from services.wire.messages import VERDICTS, FlowFilter

EVENT_TYPES = {"drop": EVENT_DROP, "trace": EVENT_TRACE, "policy-verdict": EVENT_POLICY_VERDICT}
TRACE_POINT_NAMES = sorted(TRACE_NAMES.values())
PROTOCOLS = ("tcp", "udp", "icmp", "sctp")
DIRECTIONS = ("ingress", "egress")


class FilterError(ValueError):
    """A filter value that can never match; the message names the flag."""


def validate(f: FlowFilter) -> FlowFilter:
    """F itself, or FilterError naming the first value no flow can have."""
    for v in f.verdict:
        if v not in VERDICTS:
            raise FilterError(f"--verdict: {v!r} is not one of {', '.join(VERDICTS)}")
    for t in f.type:
        name, _, point = t.partition(":")
        if name not in EVENT_TYPES or (point and (name != "trace" or point not in TRACE_POINT_NAMES)):
            raise FilterError(f"--type: {t!r} is not drop, policy-verdict, trace or "
                              f"trace:{'|'.join(TRACE_POINT_NAMES)}")
    for p in f.protocol:
        if p not in PROTOCOLS:
            raise FilterError(f"--protocol: {p!r} is not one of {', '.join(PROTOCOLS)}")
    for d in f.traffic_direction:
        if d not in DIRECTIONS:
            raise FilterError(f"--traffic-direction: {d!r} is not ingress or egress")
    for flag, refs in (("--from-pod", f.from_pod), ("--to-pod", f.to_pod), ("--pod", f.pod)):
        for ref in refs:
            if ref.count("/") != 1 or not all(ref.split("/")):
                raise FilterError(f"{flag}: {ref!r} is not NAMESPACE/NAME")
    return f


def matches(flow: dict, f: FlowFilter) -> bool:
    src, dst = flow.get("source", {}), flow.get("destination", {})
    checks = (
        (f.verdict, lambda: flow.get("verdict") in f.verdict),
        (f.from_pod, lambda: pod_ref(src) in f.from_pod),
        (f.to_pod, lambda: pod_ref(dst) in f.to_pod),
        (f.pod, lambda: pod_ref(src) in f.pod or pod_ref(dst) in f.pod),
        (f.namespace, lambda: src.get("namespace") in f.namespace or dst.get("namespace") in f.namespace),
        (f.port, lambda: bool(set(ports(flow)) & set(f.port))),
        (f.protocol, lambda: protocol(flow) in f.protocol),
        (f.type, lambda: any(_type_matches(flow, t) for t in f.type)),
        (f.traffic_direction, lambda: flow.get("traffic_direction", "").lower() in f.traffic_direction),
        (f.since, lambda: flow_time(flow) >= f.since),
    )
    return all(check() for wanted, check in checks if wanted)


def pod_ref(endpoint: dict) -> str | None:
    if "pod_name" not in endpoint:
        return None
    return f"{endpoint.get('namespace', '')}/{endpoint['pod_name']}"


def ports(flow: dict) -> tuple[int, ...]:
    for l4 in flow.get("l4", {}).values():
        if "source_port" in l4:
            return l4["source_port"], l4["destination_port"]
    return ()


def protocol(flow: dict) -> str | None:
    """tcp, udp, sctp, or icmp (ICMPv4 and ICMPv6 alike), as hubble's --protocol reads it."""
    for name in flow.get("l4", {}):
        return "icmp" if name.startswith("ICMP") else name.lower()
    return None


def _type_matches(flow: dict, wanted: str) -> bool:
    name, _, point = wanted.partition(":")
    event = flow.get("event_type", {})
    if event.get("type") != EVENT_TYPES[name]:
        return False
    return not point or TRACE_NAMES.get(event.get("sub_type")) == point


def flow_time(flow: dict) -> float:
    """A flow's time (RFC 3339, UTC, nanoseconds) as unix seconds."""
    text = flow.get("time", "")
    whole, _, frac = text.rstrip("Z").partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)
