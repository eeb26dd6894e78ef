"""Policies + identities -> one endpoint's policy map entries. Pure logic, no I/O.

Semantics (Kubernetes NetworkPolicy and Cilium):
- an endpoint no policy enforces for a direction gets one default entry that allows all;
  once a policy enforces it, the default entry denies (Cilium reason 133) and only what
  allow rules permit passes; allow rules add up; deny rules beat allows (reason 181);
- audit: when every policy putting the endpoint in default deny is in audit mode (or the
  endpoint is), would-be drops pass and are reported as AUDIT.
The datapath looks a new connection up with the peer's identity and with identity 0 (any
peer) and lets a deny from either win; within one lookup the longest prefix wins, so an
allow that a less specific deny of the same identity covers is written as a deny.
"""
from __future__ import annotations

import bisect
import zlib
from dataclasses import dataclass

from services.datapath.maps.policy import (PREFIX_DEFAULT, PREFIX_PEER, PREFIX_PORT_BASE,
                                           PREFIX_PROTO, Key, Value)
from services.datapath.numbers import (IDENTITY_HOST, IDENTITY_WORLD, POLICY_AUDIT,
                                       POLICY_DEFAULT, POLICY_DENY, POLICY_MATCH_ALL,
                                       POLICY_MATCH_L3_L4, POLICY_MATCH_L3_ONLY,
                                       POLICY_MATCH_L3_PROTO, POLICY_MATCH_L4_ONLY,
                                       POLICY_MATCH_PROTO_ONLY)
from services.policyd.identity import CIDR_LABEL, CidrLabels
from services.policyd.model import DIRECTIONS, EGRESS, Peer, Policy, PortRule, Rule, namespace_of
from services.runtime.gil import sorted_in_steps
from services.wire import prefix

PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}
ANY_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_RULE = 0            # rule_id of default entries


def rule_id(policy: Policy, rule: Rule) -> int:
    """A stable number for a rule, carried in its map entries for attribution."""
    text = f"{policy.key}|{rule.direction}|{'deny' if rule.deny else 'allow'}|{rule.index}"
    return (zlib.crc32(text.encode()) & 0xFFFFFFFF) or 1


def match_type(identity: int, prefixlen: int) -> int:
    """Cilium's policy match type of a rule entry: does it name a peer, a protocol, a port?"""
    peer = identity != 0
    if prefixlen <= PREFIX_PEER:
        return POLICY_MATCH_L3_ONLY if peer else POLICY_MATCH_ALL
    if prefixlen <= PREFIX_PROTO:
        return POLICY_MATCH_L3_PROTO if peer else POLICY_MATCH_PROTO_ONLY
    return POLICY_MATCH_L3_L4 if peer else POLICY_MATCH_L4_ONLY


@dataclass(frozen=True)
class RuleInfo:
    policy: str
    direction: str
    deny: bool
    index: int


def rule_table(policies: list[Policy]) -> dict[int, RuleInfo]:
    return {rule_id(p, r): RuleInfo(p.key, r.direction, r.deny, r.index) for p in policies for r in p.rules}


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: int
    identity: int
    audit: bool = False         # the endpoint's own audit mode (a pod annotation)


class Universe:
    """Every identity the node knows, for resolving rule peers to identity numbers."""

    def __init__(self, identities: dict[int, dict[str, str]]) -> None:
        self.identities = identities
        self._resolved: dict[Peer, frozenset[int]] = {}   # valid while identities are unchanged
        self.pods = {i: labels for i, labels in identities.items()
                     if type(labels) is not CidrLabels and namespace_of(labels) is not None}
        self.cidrs: dict[int, str] = {}
        for i, labels in identities.items():
            if type(labels) is CidrLabels:
                self.cidrs[i] = labels.cidr
                continue
            for key in labels:
                if key.startswith(CIDR_LABEL):
                    self.cidrs[i] = key[len(CIDR_LABEL):]
        # Host routes (/32) by their prefix: a /32 peer selects its own identity and no
        # other, found without a search, and without a cache entry per peer.
        self._hosts = {c: i for i, c in self.cidrs.items() if c.endswith("/32")}
        self._by_start: list[tuple[int, int, int]] | None = None     # made when first needed
        self._starts: list[int] = []

    def _index(self) -> list[tuple[int, int, int]]:
        """CIDR identities by first address: the ones inside a prefix are one slice of it, so
        resolving 100k ipBlock peers costs 100k bisections, not 100k scans of every CIDR."""
        if self._by_start is None:
            by_start = sorted_in_steps((*prefix.bounds(c)[::2], i) for i, c in self.cidrs.items())
            self._starts = [start for start, _, _ in by_start]
            self._by_start = by_start
        return self._by_start

    def cidrs_within(self, cidr: str) -> list[tuple[int, int, int]]:
        """(first address, prefix length, identity) of every CIDR identity inside CIDR."""
        by_start = self._index()
        first, last, plen = prefix.bounds(cidr)
        lo = bisect.bisect_left(self._starts, first)
        hi = bisect.bisect_right(self._starts, last)
        return [c for c in by_start[lo:hi] if c[1] >= plen]

    def resolve_all(self, peers: tuple[Peer, ...]) -> set[int]:
        """Identity numbers any of PEERS selects (as resolve, one by one)."""
        out: set[int] = set()
        hosts = self._hosts
        for peer in peers:
            host = hosts.get(peer.cidr) if peer.cidr is not None and not peer.except_ else None
            if host is not None:
                out.add(host)
            else:
                out |= self.resolve(peer)
        return out

    def resolve(self, peer: Peer) -> frozenset[int]:
        """Identity numbers PEER selects; 0 means any peer."""
        if peer not in self._resolved:
            self._resolved[peer] = frozenset(self._resolve(peer))
        return self._resolved[peer]

    def _resolve(self, peer: Peer) -> set[int]:
        if peer.entity == "all":
            return {0}
        if peer.entity == "host":
            return {IDENTITY_HOST}
        if peer.entity == "world":
            return {IDENTITY_WORLD, *self.cidrs}
        if peer.entity == "cluster":
            return {IDENTITY_HOST, *self.pods}
        if peer.cidr is not None:
            carved = {i for e in peer.except_ for _, _, i in self.cidrs_within(e)}
            out = {i for _, _, i in self.cidrs_within(peer.cidr) if i not in carved}
            if prefix.bounds(peer.cidr)[2] == 0 and not peer.except_:
                out.add(IDENTITY_WORLD)
            return out
        return {i for i, labels in self.pods.items() if peer.matches_pod(labels)}


def names_as_peer(policy: Policy, identity_labels: dict[str, str]) -> bool:
    """Can one of POLICY's rules select a pod identity with IDENTITY_LABELS as its peer?
    (Only such policies' endpoints have entries that a pod identity coming or going changes:
    a rule without peers is written for identity 0, entities and CIDRs never name pods
    except "cluster".)"""
    return any(peer.entity == "cluster" or peer.matches_pod(identity_labels)
               for rule in policy.rules for peer in rule.peers)


def port_blocks(first: int, last: int) -> list[tuple[int, int]]:
    """[first, last] as aligned blocks (base, bits fixed of 16), as an LPM trie needs."""
    out = []
    while first <= last:
        size = first & -first if first else 1 << 16
        while size > last - first + 1:
            size >>= 1
        out.append((first, 16 - size.bit_length() + 1))
        first += size
    return out


def _l4_keys(ports: tuple[PortRule, ...]) -> list[tuple[int, int, int]]:
    """(protocol, port, prefixlen) triples for a rule's ports; empty ports: everything."""
    if not ports:
        return [(0, 0, PREFIX_PEER)]
    out = []
    for pr in ports:
        if pr.port < 0:
            continue            # a named port: pods here have no container ports to name
        protos = ANY_PORT_PROTOCOLS if pr.protocol == "ANY" and pr.port else (pr.protocol,)
        for proto in protos:
            if proto == "ANY":
                out.append((0, 0, PREFIX_PEER))
            elif proto == "ICMP":
                out.append((1, pr.port, PREFIX_PORT_BASE + 16))     # port is the exact type
            elif pr.port == 0:
                out.append((PROTO_NUMBERS[proto], 0, PREFIX_PROTO))
            else:
                for base, bits in port_blocks(pr.port, pr.last):
                    out.append((PROTO_NUMBERS[proto], base, PREFIX_PORT_BASE + bits))
    return out


def keys_per_peer(ports: tuple[PortRule, ...]) -> int:
    """How many map entries a rule with PORTS makes for each peer identity it selects."""
    return len(_l4_keys(ports))


def _covers(deny: Key, allow: Key) -> bool:
    """True when DENY's prefix contains ALLOW (same endpoint, direction and identity)."""
    if deny.identity != allow.identity or deny.prefixlen > allow.prefixlen:
        return False
    if deny.prefixlen <= PREFIX_PEER:
        return True
    if deny.protocol != allow.protocol:
        return False
    if deny.prefixlen <= PREFIX_PROTO:
        return True
    shift = 16 - (deny.prefixlen - PREFIX_PORT_BASE)
    return deny.port >> shift == allow.port >> shift


class TooManyEntries(Exception):
    """An endpoint's entries would exceed the limit given to compile_endpoint."""


def compile_endpoint(ep: Endpoint, policies: list[Policy], universe: Universe,
                     enforcement: str = "default", limit: int | None = None) -> dict[Key, Value]:
    """LIMIT (the policy map's capacity): raise TooManyEntries as soon as the endpoint's
    entries pass it, instead of computing all of what can never be written."""
    labels = universe.identities.get(ep.identity, {})
    audit = ep.audit
    selecting = [p for p in policies if p.selects(labels)]
    entries: dict[Key, Value] = {}
    for direction in DIRECTIONS:
        egress = direction == EGRESS
        enforcers = [p for p in selecting if direction in p.enforces]
        if enforcement == "never":
            entries[Key(ep.endpoint_id, egress, 0, 0, 0, PREFIX_DEFAULT)] = Value(POLICY_DEFAULT, DEFAULT_RULE)
            continue
        default_deny = bool(enforcers) or enforcement == "always"
        flags = POLICY_DEFAULT
        if default_deny:
            flags |= POLICY_DENY
            if audit or (enforcers and all(p.audit for p in enforcers)):
                flags |= POLICY_AUDIT
        entries[Key(ep.endpoint_id, egress, 0, 0, 0, PREFIX_DEFAULT)] = Value(flags, DEFAULT_RULE)
        left = None if limit is None else limit - len(entries)
        entries.update(_direction_entries(ep, egress, direction, selecting, universe, audit, left))
    return entries


def compile_rules(policy: Policy, universe: Universe) -> None:
    """Compile every rule of POLICY as for an endpoint it selects, and discard the result:
    raises what putting POLICY in force would raise. A stored policy is checked with it."""
    probe = Endpoint(0, 0)
    for direction in DIRECTIONS:
        _direction_entries(probe, direction == EGRESS, direction, [policy], universe, False, None)


def _direction_entries(ep: Endpoint, egress: bool, direction: str, selecting: list[Policy],
                       universe: Universe, audit: bool, limit: int | None) -> dict[Key, Value]:
    allows: dict[Key, Value] = {}
    denies: dict[Key, Value] = {}
    for policy in selecting:
        for rule in policy.rules:
            if rule.direction != direction:
                continue
            peers = {0} if not rule.peers else universe.resolve_all(rule.peers)
            flags = (POLICY_DENY | (POLICY_AUDIT if policy.audit or audit else 0)) if rule.deny else 0
            target = denies if rule.deny else allows
            rid = rule_id(policy, rule)
            l4 = _l4_keys(rule.ports)
            # One Value per match type, shared by every entry of the rule (100,000 peers made
            # 100,000 equal Values).
            values = {(peer, plen): Value(flags, rid, match_type(peer, plen)) for peer in (0, 1) for _, _, plen in l4}
            setdefault, ep_id = target.setdefault, ep.endpoint_id
            for identity in sorted(peers):
                peer = 1 if identity else 0
                for proto, port, plen in l4:
                    setdefault(Key(ep_id, egress, identity, proto, port, plen), values[peer, plen])
                if limit is not None and len(allows) + len(denies) > limit:
                    raise TooManyEntries(f"endpoint {ep.endpoint_id}: more than {limit} policy entries")
    if not denies:
        return allows
    out = dict(denies)
    order = {key: i for i, key in enumerate(denies)}
    denied = {key.identity for key in denies}
    for key, value in allows.items():
        if key in denies:
            continue
        if key.identity not in denied:       # only a deny of the same identity can cover it
            out[key] = value
            continue
        # The first deny (in rule order) whose prefix contains KEY: at most 19 lookups per
        # allow, where scanning every deny made a large policy quadratic under policyd's lock.
        covers = [d for d in _covering(key) if d in order]
        out[key] = denies[min(covers, key=order.__getitem__)] if covers else value
    return out


def _covering(key: Key) -> list[Key]:
    """Every key _l4_keys can make whose prefix contains KEY (same endpoint, direction and
    identity), KEY itself included."""
    def at(protocol: int, port: int, prefixlen: int) -> Key:
        return Key(key.endpoint_id, key.egress, key.identity, protocol, port, prefixlen)

    out = [at(0, 0, PREFIX_PEER)]
    if key.prefixlen > PREFIX_PEER:
        out.append(at(key.protocol, 0, PREFIX_PROTO))
    for bits in range(0, key.prefixlen - PREFIX_PORT_BASE + 1):
        shift = 16 - bits
        out.append(at(key.protocol, key.port >> shift << shift, PREFIX_PORT_BASE + bits))
    return [k for k in out if _covers(k, key)]


@dataclass(frozen=True)
class Diff:
    """What to change in the map to go from one set of entries to another, in a safe order:
    allows first, then denies and defaults, then removals (see PolicyService.apply_diff)."""

    allows: dict[Key, Value]
    denies: dict[Key, Value]
    removed: list[Key]

    @property
    def empty(self) -> bool:
        return not (self.allows or self.denies or self.removed)

    @property
    def writes(self) -> int:
        return len(self.allows) + len(self.denies)


def diff(current: dict[Key, Value], wanted: dict[Key, Value]) -> Diff:
    allows: dict[Key, Value] = {}
    denies: dict[Key, Value] = {}
    get, deny_or_default = current.get, POLICY_DENY | POLICY_DEFAULT
    for k, v in wanted.items():
        have = get(k)
        if have is v or have == v:
            continue
        if v.flags & deny_or_default:
            denies[k] = v
        else:
            allows[k] = v
    removed = sorted(k for k in current if k not in wanted) if current else []
    return Diff(allows, denies, removed)
