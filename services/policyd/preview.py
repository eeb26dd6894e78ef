"""What applying a policy would change: the reachability of the affected pods before and
after, cell by cell, with the rule that decides each cell. Pure logic, no I/O.

Both states are policy map entries as policyd's compiler makes them (the "before" is what
the map holds now, the "after" is that plus the diff an apply would write), and each cell
is decided as the datapath decides a new connection (services.datapath.maps.policy.decide,
the mirror of policy_check): the source's egress entries, then the destination's ingress
entries. There is no second policy engine here, only the explanation of its answers.

A cell is (source pod, destination pod, protocol, port); for ICMP the port is the type.
Only cells with an affected pod (one whose entries change) at either end can change.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from services.datapath.maps.policy import Decision, Key, Value, decide
from services.datapath.numbers import VERDICT_AUDIT, VERDICT_DROPPED
from services.policyd.compiler import (ANY_PORT_PROTOCOLS, DEFAULT_RULE, PROTO_NUMBERS, Endpoint,
                                       RuleInfo, rule_table)
from services.policyd.model import EGRESS, INGRESS, Policy

ALLOWED, DENIED, AUDIT = "allowed", "denied", "audit"
ICMP_ECHO = ("ICMP", 8)         # always previewed: a default deny changes every protocol
MAX_PORTS = 32                  # protocol/port pairs in one preview
MAX_CELLS = 200_000
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}
FLOW_L4 = {"TCP": "TCP", "UDP": "UDP", "SCTP": "SCTP", "ICMPv4": "ICMP"}


class PreviewTooLarge(Exception):
    pass


class State:
    """One side of the preview: every endpoint's entries, and what explains them. Decisions
    are cached: pods of one identity ask the same questions."""

    def __init__(self, entries: dict[int, dict[Key, Value]], policies: list[Policy],
                 identities: dict[int, dict[str, str]], enforcement: str) -> None:
        self.entries = entries
        self.policies = policies
        self.identities = identities
        self.enforcement = enforcement
        self.rules = rule_table(policies)
        self._cache: dict[tuple, Decision] = {}

    def decide(self, ep: int, egress: bool, peer: int, proto: int, port: int) -> Decision:
        key = (ep, egress, peer, proto, port)
        cache = self._cache
        if key not in cache:
            cache[key] = decide(self.entries.get(ep, {}), ep, egress, peer, proto, port)
        return cache[key]


@dataclass(frozen=True)
class Verdict:
    verdict: str                # allowed | denied | audit
    reason: str


@dataclass(frozen=True)
class Cell:
    source: str
    destination: str
    protocol: str
    port: int
    before: Verdict
    after: Verdict

    @property
    def changed(self) -> bool:
        return self.before.verdict != self.after.verdict


def policy_name(policy_key_or_info: str) -> str:
    """'CiliumNetworkPolicy/shop/db-only' -> 'shop/db-only' (cluster-wide: just the name)."""
    return policy_key_or_info.split("/", 1)[1]


def apply_diffs(entries: dict[int, dict[Key, Value]], diffs: dict) -> dict[int, dict[Key, Value]]:
    """ENTRIES with DIFFS (compiler.Diff per endpoint) applied; ENTRIES is left as it is."""
    out = dict(entries)
    for ep_id, d in diffs.items():
        new = dict(out.get(ep_id, {}))
        new.update(d.allows)
        new.update(d.denies)
        for key in d.removed:
            new.pop(key, None)
        if new:
            out[ep_id] = new
        else:
            out.pop(ep_id, None)
    return out


def policy_ports(policies: Iterable[Policy]) -> list[tuple[str, int]]:
    """The protocol/port pairs POLICIES' rules name (a range by its first and last port),
    and ICMP echo."""
    out: dict[tuple[str, int], None] = {}
    for policy in policies:
        for rule in policy.rules:
            for pr in rule.ports:
                if pr.port <= 0 or pr.protocol == "ANY" and not pr.port:
                    continue        # every port, or a named one: recent flows name ports
                protos = ANY_PORT_PROTOCOLS if pr.protocol == "ANY" else (pr.protocol,)
                for proto in protos:
                    for port in (pr.port, pr.last) if proto != "ICMP" else (pr.port,):
                        out[(proto, port)] = None
    out[ICMP_ECHO] = None
    return list(out)


def flow_ports(flows: Iterable[dict]) -> list[tuple[str, int]]:
    """The protocol/port pairs of new connections in FLOWS (policy-verdict flows), most
    frequent first: the destination port, or the ICMP type."""
    seen: Counter = Counter()
    for flow in flows:
        if flow.get("is_reply"):
            continue
        for name, l4 in (flow.get("l4") or {}).items():
            proto = FLOW_L4.get(name)
            if proto == "ICMP" and isinstance(l4.get("type"), int):
                seen[(proto, l4["type"])] += 1
            elif proto and isinstance(l4.get("destination_port"), int):
                seen[(proto, l4["destination_port"])] += 1
    return [pair for pair, _ in seen.most_common()]


def choose_ports(from_policy: list[tuple[str, int]], from_flows: list[tuple[str, int]]
                 ) -> tuple[list[tuple[str, int]], int]:
    """The policy's pairs first, then the flows' ones, at most MAX_PORTS; and how many were
    left out."""
    merged = list(dict.fromkeys([*from_policy, *from_flows]))
    return merged[:MAX_PORTS], max(0, len(merged) - MAX_PORTS)


def matrix(endpoints: dict[int, Endpoint], names: dict[int, str], affected: set[int],
           ports: list[tuple[str, int]], before: State, after: State) -> list[Cell]:
    """Every cell with an affected endpoint at either end, both ways, in order."""
    ids = sorted((ep for ep in endpoints if ep in names), key=names.__getitem__)
    pairs = [(s, d) for s in ids for d in ids if s != d and (s in affected or d in affected)]
    if len(pairs) * len(ports) > MAX_CELLS:
        raise PreviewTooLarge(f"the preview would have {len(pairs) * len(ports)} cells, more than "
                              f"{MAX_CELLS}: {len(affected)} affected pods of {len(ids)}, {len(ports)} ports")
    out = []
    for src, dst in pairs:
        for proto, port in ports:
            cell = [names[src], names[dst], proto, port]
            for state in (before, after):
                cell.append(_verdict(state, endpoints[src], endpoints[dst], names, proto, port))
            out.append(Cell(*cell))
    return out


def _verdict(state: State, src: Endpoint, dst: Endpoint, names: dict[int, str], proto: str,
             port: int) -> Verdict:
    number = PROTO_NUMBERS[proto]
    egress = state.decide(src.endpoint_id, True, dst.identity, number, port)
    ingress = state.decide(dst.endpoint_id, False, src.identity, number, port)
    sides = [(egress, lambda: explain(state, src, EGRESS, egress, names)),
             (ingress, lambda: explain(state, dst, INGRESS, ingress, names))]
    for decision, why in sides:
        if decision.verdict == VERDICT_DROPPED:
            return Verdict(DENIED, why())
    audited = [why() for decision, why in sides if decision.verdict == VERDICT_AUDIT]
    if audited:
        return Verdict(AUDIT, "; ".join(audited))
    ruled = [why() for decision, why in sides if decision.entry.rule_id != DEFAULT_RULE]
    return Verdict(ALLOWED, "; ".join(ruled) or sides[1][1]())       # both defaults: the same words


def explain(state: State, ep: Endpoint, direction: str, decision: Decision, names: dict[int, str]) -> str:
    """Which rule (or default) of EP's DIRECTION entries made DECISION, in words."""
    pod = names.get(ep.endpoint_id, f"endpoint {ep.endpoint_id}")
    entry = decision.entry
    if entry is None:
        return f"no policy entries for {pod} (fail closed)"
    if entry.rule_id != DEFAULT_RULE:
        info: RuleInfo | None = state.rules.get(entry.rule_id)
        if info is None:
            return f"rule {entry.rule_id} (no policy names it)"
        listed = f"{info.direction}{'Deny' if info.deny else ''}[{info.index}]"
        return f"policy {policy_name(info.policy)} {listed}"
    if state.enforcement == "never":
        return "default-allow (policy enforcement is never)"
    if decision.verdict != VERDICT_DROPPED and decision.verdict != VERDICT_AUDIT:
        return "default-allow"
    labels = state.identities.get(ep.identity, {})
    enforcers = sorted(policy_name(p.key) for p in state.policies
                       if direction in p.enforces and p.selects(labels))
    if not enforcers:
        return "default-deny: policy enforcement is always"
    audit = " (audit)" if decision.verdict == VERDICT_AUDIT else ""
    if len(enforcers) == 1:
        return f"default-deny{audit}: {direction} policy {enforcers[0]} selects {pod}"
    return f"default-deny{audit}: {direction} policies {', '.join(enforcers)} select {pod}"
