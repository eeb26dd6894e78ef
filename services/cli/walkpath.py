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
                                       TRACE_FROM_LXC, TRACE_NAMES, TRACE_TO_LXC, TRACE_TO_STACK)

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
    node: str = ""          # the node it runs on


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
    node: str = ""                  # the node it happened on (set when a walk crosses nodes)


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


def trace_of(flows: list[dict], point: int) -> dict | None:
    return next((f for f in flows if _kind(f) == (EVENT_TRACE, point)), None)


def verdict_of(flows: list[dict], direction: str, endpoint: Pod) -> dict | None:
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


def policy_hop(flow: dict | None, where: str, whose: Pod, direction: str) -> Hop:
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
    request, reply = split(flows, src, dst, probe)
    hops = sending(request, src, dst, probe, pod_route)
    lxc = f"host {src.ifname}"
    egress = verdict_of(request, "EGRESS", src)
    if egress is None or egress["verdict"] != "DROPPED":
        hop = policy_hop(verdict_of(request, "INGRESS", dst), lxc, dst, "ingress")
        hop.details.append("decided here too: from_container enforces the policy of a destination on this node")
        hops.append(hop)
    dropped = drop_hop(request, src.ifname)
    if dropped is not None:
        hops.append(dropped[0])
        return Walk(src, dst, probe, mode, hops, "DROPPED", dropped[1], reply_text(reply))
    hops += _forwarding(request, src, dst, host_route, iptables)
    return arrival(request, src, dst, probe, mode, hops, reply_text(reply))


def split(flows: list[dict], src: Pod, dst: Pod, probe: Probe) -> tuple[list[dict], list[dict]]:
    """(the probe's request flows, its reply's) among FLOWS."""
    return ([f for f in flows if is_probe(f, src, dst, probe, reply=False)],
            [f for f in flows if is_probe(f, src, dst, probe, reply=True)])


def sending(request: list[dict], src: Pod, dst: Pod, probe: Probe, pod_route: str) -> list[Hop]:
    """The source's hops: the pod sends, from_container takes it, the egress policy decides."""
    lxc = f"host {src.ifname}"
    if probe.protocol == "icmp":
        what = f"sends ICMP echo request {src.ip} -> {dst.ip} (id {probe.sport})"
    else:
        what = f"sends {probe.protocol.upper()} {src.ip}:{probe.sport} -> {dst.ip}:{probe.port}"
    hops = [Hop(f"{src.ref} eth0", what, details=[f"route: {pod_route}"])]
    sent = trace_of(request, TRACE_FROM_LXC)
    hops.append(Hop(lxc, f"from_container (tc ingress), endpoint {src.endpoint_id}, identity {src.identity}",
                    details=[] if sent else ["no from-endpoint trace reported"],
                    flows=[sent["uuid"]] if sent else []))
    hops.append(policy_hop(verdict_of(request, "EGRESS", src), lxc, src, "egress"))
    return hops


def drop_hop(request: list[dict], ifname: str) -> tuple[Hop, str] | None:
    """The hop where the request was dropped, and why and where in words (IFNAME: where, when
    the event names no device)."""
    drop = next((f for f in request if is_drop(f)), None)
    if drop is None:
        return None
    where = drop.get("interface", {}).get("name") or ifname
    why = f"{drop.get('drop_reason_desc', '')} (drop reason {drop.get('drop_reason', 0)})"
    return (Hop(f"host {where}", f"DROPPED: {why}", verdict="DROPPED", rule=rule_of(drop), flows=[drop["uuid"]]),
            f"{why} at {where}")


OUTCOMES = {"answered": "the destination answered", "refused": "the destination's stack refused it "
            "(nothing listens on the port)", "timeout": "no answer", "unreachable": "an ICMP error came back",
            "dropped": "dropped"}


def arrival(request: list[dict], src: Pod, dst: Pod, probe: Probe, mode: str, hops: list[Hop],
            reply: list[str], node: str = "") -> Walk:
    """The walk, ending with the destination pod: delivered, or not seen arriving."""
    delivered = next((f for f in request if _kind(f) == (EVENT_TRACE, TRACE_TO_LXC)), None)
    answered = probe.outcome in DELIVERED_OUTCOMES
    seen = f"{OUTCOMES.get(probe.outcome, probe.outcome)} after {probe.seconds * 1000:.1f} ms"
    hops.append(Hop(f"{dst.ref} eth0", "delivered" if delivered or answered else "not seen arriving",
                    details=[f"probe: {seen}"], flows=[delivered["uuid"]] if delivered else [], node=node))
    if delivered or answered:
        return Walk(src, dst, probe, mode, hops, "DELIVERED", seen, reply)
    return Walk(src, dst, probe, mode, hops, "UNKNOWN", "no delivery or drop was reported and the probe got no answer",
                reply)


def _forwarding(request: list[dict], src: Pod, dst: Pod, host_route: str, iptables: list[str]) -> list[Hop]:
    to_stack = trace_of(request, TRACE_TO_STACK)
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


def reply_text(reply: list[dict], nodes: bool = False) -> list[str]:
    """The reply's flows, one line each; with NODES, each names the node that reported it."""
    out = []
    for flow in reply:
        kind, sub = _kind(flow)
        on = f"node {flow.get('node_name', '')}: " if nodes else ""
        if kind == EVENT_TRACE:
            iface = flow.get("interface", {})
            where = iface.get("name") or f"ifindex {iface.get('index', 0)}"      # not a pod's device
            point = TRACE_NAMES.get(sub, str(sub))
            out.append(f"{on}{point} at {where}: {flow.get('Summary', '')}")
        elif kind == EVENT_DROP:
            out.append(f"{on}dropped: {flow.get('drop_reason_desc', '')}")
    return out


def render(walk: Walk) -> str:
    """The walk as text, one numbered hop per block."""
    p = walk.probe
    src, dst = walk.source, walk.destination
    lines = [f"{src.ref} ({src.ip}, identity {src.identity}) -> {dst.ref} ({dst.ip}, identity {dst.identity})  "
             f"{p.protocol.upper()}{' port ' + str(p.port) if p.protocol != 'icmp' else ''}  "
             f"datapath mode: {walk.mode}", ""]
    width = max(len(h.where) for h in walk.hops)
    previous, node = "", ""
    for n, hop in enumerate(walk.hops, start=1):
        if hop.node != node:
            lines += [""] * bool(node) + [f"on node {hop.node}:"]
            node, previous = hop.node, ""
        where = hop.where if hop.where != previous else ""
        previous = hop.where
        lines.append(f"{n:>2}  {where:<{width}}  {hop.what}")
        for detail in hop.details:
            lines.append(f"    {'':<{width}}    {detail}")
    if walk.reply:
        lines += ["", "the reply, as the datapath reported it:"] + [f"    {text}" for text in walk.reply]
    lines += ["", f"{walk.result}: {walk.reason}"]
    return "\n".join(lines)
