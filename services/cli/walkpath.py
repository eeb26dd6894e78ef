"""The packet walk's model: from the flows one probe made (and what the kernel said about
routes and iptables), the hops the packet took, in order, each with what decided it. Pure.

What the datapath reports for a request from pod A to pod B on this node (bpf/lxc.c):
  lxcA from_container: trace FROM_ENDPOINT; policy verdict EGRESS (A's policy); policy verdict
      INGRESS (B's policy: for a local destination both are decided here); then either
      a drop event, or trace TO_ENDPOINT (redirect mode: bpf_redirect_peer into B's eth0) or
      trace TO_STACK (host-stack mode: the kernel routes it)
  lxcB to_container (host-stack mode only): trace TO_ENDPOINT as it enters B
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from services.cli.flowprint import POLICY_VERDICT_WORDS
from services.datapath.numbers import (EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, POLICY_MATCH_NAMES,
                                       TRACE_FROM_LXC, TRACE_TO_LXC, TRACE_TO_STACK)

L4_KEYS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMPv4"}
ICMP_ECHO = 8
DELIVERED_OUTCOMES = {"answered", "refused"}


@dataclass(frozen=True)
class Pod:
    ref: str                # NS/NAME
    ip: str
    endpoint_id: int
    identity: int
    ifname: str             # the host-side veth
    ifindex: int


@dataclass(frozen=True)
class Probe:
    protocol: str           # tcp | udp | icmp
    port: int
    sport: int              # source port (TCP/UDP); the echo identifier (ICMP)
    outcome: str            # services/cli/probe.py: answered | refused | unreachable | timeout
    seconds: float


@dataclass
class Hop:
    where: str
    what: str
    verdict: str = ""               # ALLOWED / DENIED / AUDITED / DROPPED, where one was decided
    rule: dict | None = None        # the policy rule behind the verdict (flow attribution)
    details: list[str] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)      # uuids of the flows this hop rests on


@dataclass
class Walk:
    source: Pod
    destination: Pod
    probe: Probe
    mode: str
    hops: list[Hop]
    result: str                     # DELIVERED | DROPPED | UNKNOWN
    reason: str
    reply: list[str]

    def to_json(self) -> dict:
        return asdict(self)


def _ports(flow: dict) -> tuple[int, int] | None:
    for l4 in flow.get("l4", {}).values():
        if "source_port" in l4:
            return l4["source_port"], l4["destination_port"]
    return None


def is_probe(flow: dict, src: Pod, dst: Pod, probe: Probe, reply: bool) -> bool:
    """Whether FLOW is the probe's request (or, with REPLY, its answer)."""
    a, b = (dst, src) if reply else (src, dst)
    ip = flow.get("IP", {})
    if ip.get("source") != a.ip or ip.get("destination") != b.ip:
        return False
    l4 = flow.get("l4", {})
    if L4_KEYS[probe.protocol] not in l4:
        return False
    if probe.protocol == "icmp":
        kind = l4["ICMPv4"].get("type")
        return kind != ICMP_ECHO if reply else kind == ICMP_ECHO
    ports = _ports(flow)
    want = (probe.port, probe.sport) if reply else (probe.sport, probe.port)
    return ports == want


def _kind(flow: dict) -> tuple[int, int]:
    event = flow.get("event_type", {})
    return event.get("type", 0), event.get("sub_type", 0)


def is_drop(flow: dict) -> bool:
    return _kind(flow)[0] == EVENT_DROP


def _trace(flows: list[dict], point: int) -> dict | None:
    return next((f for f in flows if _kind(f) == (EVENT_TRACE, point)), None)


def _verdict(flows: list[dict], direction: str, endpoint: Pod) -> dict | None:
    side = "source" if direction == "EGRESS" else "destination"
    return next((f for f in flows if _kind(f)[0] == EVENT_POLICY_VERDICT and f.get("traffic_direction") == direction
                 and f.get(side, {}).get("ID") == endpoint.endpoint_id), None)


def rule_of(flow: dict) -> dict | None:
    for key in ("egress_allowed_by", "egress_denied_by", "ingress_allowed_by", "ingress_denied_by"):
        if flow.get(key):
            return flow[key][0]
    return None


def rule_text(rule: dict | None) -> str:
    if rule is None:
        return "no rule reported"
    if rule.get("kind") == "Default":
        return rule["name"]
    where = f"{rule['namespace']}/" if rule.get("namespace") else ""
    return f"{rule['kind']} {where}{rule['name']} rule {rule.get('rule_index', 0)}"


DEFAULTS = {"default-allow": "no {direction} policy selects {pod}: everything is allowed",
            "default-deny": "{direction} policies select {pod} and no rule of theirs allows this"}


def _policy_hop(flow: dict | None, where: str, whose: Pod, direction: str) -> Hop:
    if flow is None:
        return Hop(where, f"{direction} policy of {whose.ref}: no verdict reported "
                          "(events lost? see `capillary status`)")
    verdict = POLICY_VERDICT_WORDS.get(flow["verdict"], flow["verdict"])
    rule = rule_of(flow)
    match = POLICY_MATCH_NAMES.get(flow.get("policy_match_type", 0), "none")
    details = [f"match: {match}"]
    if rule is not None and rule.get("name") in DEFAULTS and rule.get("kind") == "Default":
        details.insert(0, DEFAULTS[rule["name"]].format(direction=direction, pod=whose.ref))
    return Hop(where, f"{direction} policy of {whose.ref}: {verdict} by {rule_text(rule)}", verdict=verdict,
               rule=rule, details=details, flows=[flow["uuid"]])


def build(flows: list[dict], src: Pod, dst: Pod, probe: Probe, mode: str, pod_route: str,
          host_route: str, iptables: list[str]) -> Walk:
    """The walk of PROBE from SRC to DST. FLOWS: every flow seen meanwhile (others are
    ignored). POD_ROUTE: the route the source pod's kernel picked; HOST_ROUTE and IPTABLES:
    the host's route to DST for packets from SRC's veth and the iptables rules whose
    counters moved during the probe (consulted only when the packet went through the stack)."""
    if src.ip == dst.ip:
        hop = Hop(f"{src.ref} lo", "a pod's packets to itself never leave its namespace: no veth, no program, "
                  "no policy", details=[f"route: {pod_route}"])
        delivered = probe.outcome in DELIVERED_OUTCOMES
        return Walk(src, dst, probe, mode, [hop], "DELIVERED" if delivered else "UNKNOWN",
                    f"the probe {'was answered' if delivered else 'got no answer'} inside the pod", [])
    request = [f for f in flows if is_probe(f, src, dst, probe, reply=False)]
    reply = [f for f in flows if is_probe(f, src, dst, probe, reply=True)]
    lxc = f"host {src.ifname}"
    if probe.protocol == "icmp":
        what = f"sends ICMP echo request {src.ip} -> {dst.ip} (id {probe.sport})"
    else:
        what = f"sends {probe.protocol.upper()} {src.ip}:{probe.sport} -> {dst.ip}:{probe.port}"
    hops = [Hop(f"{src.ref} eth0", what, details=[f"route: {pod_route}"])]
    sent = _trace(request, TRACE_FROM_LXC)
    hops.append(Hop(lxc, f"from_container (tc ingress), endpoint {src.endpoint_id}, identity {src.identity}",
                    details=[] if sent else ["no from-endpoint trace reported"],
                    flows=[sent["uuid"]] if sent else []))
    egress = _verdict(request, "EGRESS", src)
    hops.append(_policy_hop(egress, lxc, src, "egress"))
    drop = next((f for f in request if is_drop(f)), None)
    ingress = _verdict(request, "INGRESS", dst)
    if egress is None or egress["verdict"] != "DROPPED":
        hop = _policy_hop(ingress, lxc, dst, "ingress")
        hop.details.append("decided here too: from_container enforces the policy of a destination on this node")
        hops.append(hop)
    if drop is not None:
        where = drop.get("interface", {}).get("name") or src.ifname
        why = f"{drop.get('drop_reason_desc', '')} (drop reason {drop.get('drop_reason', 0)})"
        hops.append(Hop(f"host {where}", f"DROPPED: {why}", verdict="DROPPED", rule=rule_of(drop),
                        flows=[drop["uuid"]]))
        return Walk(src, dst, probe, mode, hops, "DROPPED", f"{why} at {where}", _reply_text(reply))
    hops += _forwarding(request, src, dst, host_route, iptables)
    delivered = next((f for f in request if _kind(f) == (EVENT_TRACE, TRACE_TO_LXC)), None)
    answered = probe.outcome in DELIVERED_OUTCOMES
    outcome = {"answered": "the destination answered", "refused": "the destination's stack refused it "
               "(nothing listens on the port)", "timeout": "no answer", "unreachable": "an ICMP error came back",
               "dropped": "dropped"}
    seen = f"{outcome.get(probe.outcome, probe.outcome)} after {probe.seconds * 1000:.1f} ms"
    hops.append(Hop(f"{dst.ref} eth0", "delivered" if delivered or answered else "not seen arriving",
                    details=[f"probe: {seen}"], flows=[delivered["uuid"]] if delivered else []))
    if delivered or answered:
        return Walk(src, dst, probe, mode, hops, "DELIVERED", seen, _reply_text(reply))
    return Walk(src, dst, probe, mode, hops, "UNKNOWN", "no delivery or drop was reported and the probe got no answer",
                _reply_text(reply))


def _forwarding(request: list[dict], src: Pod, dst: Pod, host_route: str, iptables: list[str]) -> list[Hop]:
    to_stack = _trace(request, TRACE_TO_STACK)
    if to_stack is not None:
        hops = [Hop("host stack", "from_container passes the packet on (TC_ACT_OK): the kernel routes it",
                    details=[f"route: {host_route}"] +
                    [f"iptables: {line}" for line in iptables or ["no rule counter moved"]],
                    flows=[to_stack["uuid"]])]
        arrived = next((f for f in request if _kind(f) == (EVENT_TRACE, TRACE_TO_LXC)
                        and f.get("interface", {}).get("index") == dst.ifindex), None)
        hops.append(Hop(f"host {dst.ifname}", f"to_container (tc egress) into {dst.ref}: policy was decided "
                        "at the source, trace only", flows=[arrived["uuid"]] if arrived else []))
        return hops
    redirected = next((f for f in request if _kind(f) == (EVENT_TRACE, TRACE_TO_LXC)
                       and f.get("interface", {}).get("index") == src.ifindex), None)
    if redirected is not None:
        return [Hop(f"host {src.ifname}", f"bpf_redirect_peer into {dst.ref} eth0 (the peer of {dst.ifname})",
                    details=["the host stack is bypassed: no route lookup, no iptables, no router device"],
                    flows=[redirected["uuid"]])]
    return [Hop("forwarding", "no forwarding decision reported (events lost? see `capillary status`)")]


def _reply_text(reply: list[dict]) -> list[str]:
    out = []
    for flow in reply:
        kind, sub = _kind(flow)
        if kind == EVENT_TRACE:
            where = flow.get("interface", {}).get("name", "")
            point = {TRACE_FROM_LXC: "from-endpoint", TRACE_TO_LXC: "to-endpoint",
                     TRACE_TO_STACK: "to-stack"}.get(sub, str(sub))
            out.append(f"{point} at {where}: {flow.get('Summary', '')}")
        elif kind == EVENT_DROP:
            out.append(f"dropped: {flow.get('drop_reason_desc', '')}")
    return out


def render(walk: Walk) -> str:
    """The walk as text, one numbered hop per block."""
    p = walk.probe
    src, dst = walk.source, walk.destination
    lines = [f"{src.ref} ({src.ip}, identity {src.identity}) -> {dst.ref} ({dst.ip}, identity {dst.identity})  "
             f"{p.protocol.upper()}{' port ' + str(p.port) if p.protocol != 'icmp' else ''}  "
             f"datapath mode: {walk.mode}", ""]
    width = max(len(h.where) for h in walk.hops)
    previous = ""
    for n, hop in enumerate(walk.hops, start=1):
        where = hop.where if hop.where != previous else ""
        previous = hop.where
        lines.append(f"{n:>2}  {where:<{width}}  {hop.what}")
        for detail in hop.details:
            lines.append(f"    {'':<{width}}    {detail}")
    if walk.reply:
        lines += ["", "the reply, as the datapath reported it:"] + [f"    {text}" for text in walk.reply]
    lines += ["", f"{walk.result}: {walk.reason}"]
    return "\n".join(lines)
