"""Two reference models for the policy fuzz target, written apart from the compiler:

- ``datapath_verdict``: the datapath's lookup (bpf/lib/policy.h policy_check over an LPM trie
  holding the compiled entries), bit for bit: longest prefix per lookup, the peer's identity
  and identity 0 looked up, a deny from either wins;
- ``semantic_verdict``: what the policies say, rule by rule (Kubernetes and Cilium semantics as
  services/policyd/compiler.py states them), with no map, prefix or identity 0 in sight.

For random policies and packets the two must agree."""
from __future__ import annotations

import ipaddress
import struct

from services.datapath.maps.policy import Key, Value
from services.datapath.numbers import (IDENTITY_HOST, IDENTITY_WORLD, POLICY_AUDIT, POLICY_DEFAULT,
                                       POLICY_DENY, POLICY_EGRESS, POLICY_INGRESS)
from services.policyd.fields import NAMED_PORT
from services.policyd.model import Peer, Policy, PortRule, Rule

FORWARDED, DROPPED, AUDIT = "FORWARDED", "DROPPED", "AUDIT"
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}


# ---- the datapath ----------------------------------------------------------------------------

def _bits(endpoint_id: int, egress: bool, identity: int, protocol: int, port: int) -> int:
    raw = struct.pack("!HBBIBBH", endpoint_id, POLICY_EGRESS if egress else POLICY_INGRESS, 0,
                      identity, protocol, 0, port)
    return int.from_bytes(raw, "big")


def _lpm(entries: dict[Key, Value], ep: int, egress: bool, identity: int, proto: int,
         port: int) -> Value | None:
    """The kernel's LPM trie lookup of a full-length key: the longest stored prefix of it."""
    wanted = _bits(ep, egress, identity, proto, port)
    best: tuple[int, Value] | None = None
    for key, value in entries.items():
        shift = 96 - key.prefixlen
        stored = _bits(key.endpoint_id, key.egress, key.identity, key.protocol, key.port)
        if stored >> shift == wanted >> shift and (best is None or key.prefixlen > best[0]):
            best = (key.prefixlen, value)
    return best[1] if best else None


def datapath_verdict(entries: dict[Key, Value], ep: int, egress: bool, peer: int, proto: int,
                     port: int) -> str:
    exact = _lpm(entries, ep, egress, peer, proto, port)
    any_ = _lpm(entries, ep, egress, 0, proto, port)
    fe = exact.flags if exact else POLICY_DEFAULT
    fa = any_.flags if any_ else POLICY_DEFAULT
    if exact and fe & (POLICY_DENY | POLICY_DEFAULT) == POLICY_DENY:
        hit, denied = exact, True
    elif any_ and fa & (POLICY_DENY | POLICY_DEFAULT) == POLICY_DENY:
        hit, denied = any_, True
    else:
        denied = False
        if exact and not fe & POLICY_DEFAULT:
            hit = exact
        elif any_ and not fa & POLICY_DEFAULT:
            hit = any_
        else:
            hit = exact or any_
        if hit is None:
            return DROPPED                    # no state for this endpoint: fail closed
    if not denied and not hit.flags & POLICY_DENY:
        return FORWARDED
    return AUDIT if hit.flags & POLICY_AUDIT else DROPPED


# ---- the policies' meaning ------------------------------------------------------------------

def _cidr_of(labels: dict[str, str]) -> ipaddress.IPv4Network | None:
    for key in labels:
        if key.startswith("cidr:"):
            return ipaddress.IPv4Network(key[len("cidr:"):])
    return None


def _peer_matches(peer: Peer, identity: int, identities: dict[int, dict[str, str]]) -> bool:
    labels = identities.get(identity, {})
    cidr = _cidr_of(labels)
    if peer.entity is not None:
        return {"all": True,
                "host": identity == IDENTITY_HOST,
                "world": identity == IDENTITY_WORLD or cidr is not None,
                "cluster": identity == IDENTITY_HOST or peer_is_pod(labels)}[peer.entity]
    if peer.cidr is not None:
        net = ipaddress.IPv4Network(peer.cidr)
        if identity == IDENTITY_WORLD:
            return net.prefixlen == 0 and not peer.except_
        return cidr is not None and cidr.subnet_of(net) and \
            not any(cidr.subnet_of(ipaddress.IPv4Network(e)) for e in peer.except_)
    return peer.matches_pod(labels)


def peer_is_pod(labels: dict[str, str]) -> bool:
    return "k8s:io.kubernetes.pod.namespace" in labels


def _port_matches(pr: PortRule, proto: int, port: int) -> bool:
    if pr.port == NAMED_PORT:
        return False
    if pr.protocol == "ICMP":
        return proto == 1 and port == pr.port
    if pr.protocol == "ANY":
        if pr.port == 0:
            return True
        return proto in (6, 17, 132) and pr.port <= port <= pr.last
    return proto == PROTOCOLS[pr.protocol] and (pr.port == 0 or pr.port <= port <= pr.last)


def _rule_matches(rule: Rule, peer: int, proto: int, port: int, identities) -> bool:
    peers = not rule.peers or any(_peer_matches(p, peer, identities) for p in rule.peers)
    ports = not rule.ports or any(_port_matches(pr, proto, port) for pr in rule.ports)
    return peers and ports


def semantic_verdict(policies: list[Policy], labels: dict[str, str], audit: bool, direction: str,
                     peer: int, proto: int, port: int, identities: dict[int, dict[str, str]]) -> str:
    """Policies here are never in audit mode themselves; AUDIT comes from the endpoint."""
    selecting = [p for p in policies if p.selects(labels)]
    rules = [r for p in selecting for r in p.rules if r.direction == direction]
    if any(r.deny and _rule_matches(r, peer, proto, port, identities) for r in rules):
        return AUDIT if audit else DROPPED
    if any(not r.deny and _rule_matches(r, peer, proto, port, identities) for r in rules):
        return FORWARDED
    if any(direction in p.enforces for p in selecting):
        return AUDIT if audit else DROPPED
    return FORWARDED
