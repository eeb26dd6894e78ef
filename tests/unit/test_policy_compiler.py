"""The policy compiler: policies + identities -> map entries, and the diff that applies them."""
import pytest

from services.datapath.maps.policy import PREFIX_DEFAULT, PREFIX_PEER, PREFIX_PROTO, Key, Value
from services.datapath.numbers import (POLICY_AUDIT, POLICY_DEFAULT, POLICY_DENY, POLICY_MATCH_ALL,
                                       POLICY_MATCH_L3_L4, POLICY_MATCH_L3_ONLY, POLICY_MATCH_L3_PROTO,
                                       POLICY_MATCH_L4_ONLY, POLICY_MATCH_NONE, POLICY_MATCH_PROTO_ONLY)
from services.policyd.compiler import (Endpoint, Universe, compile_endpoint, diff, match_type,
                                       port_blocks, rule_id)
from services.policyd.model import EGRESS, INGRESS, Peer, Policy, PortRule, Rule, Selector
from services.wire.labels import identity_labels, namespace_labels

WEB, DB, OTHER, CIDR_ID = 256, 257, 258, 1 << 24
IDS = {
    WEB: identity_labels({"app": "web"}, "x", namespace_labels("x", {})),
    DB: identity_labels({"app": "db"}, "x", namespace_labels("x", {})),
    OTHER: identity_labels({"app": "web"}, "y", namespace_labels("y", {"team": "t"})),
    CIDR_ID: {"cidr:198.18.0.0/24": ""},
}
U = Universe(IDS)
EP = Endpoint(7, WEB)


def policy(*rules: Rule, enforces=(INGRESS,), audit=False, subject=None, name="p") -> Policy:
    return Policy("CiliumNetworkPolicy", name, "x", subject or Selector.of({"app": "web"}),
                  frozenset(enforces), tuple(rules), audit)


def default(egress: bool, flags: int) -> tuple[Key, Value]:
    return Key(7, egress, 0, 0, 0, PREFIX_DEFAULT), Value(flags, 0)


@pytest.mark.parametrize("first,last,blocks", [
    (80, 80, [(80, 16)]), (80, 81, [(80, 15)]), (0, 65535, [(0, 0)]),
    (1, 3, [(1, 16), (2, 15)]), (1000, 1023, [(1000, 13), (1008, 12)]),
])
def test_port_blocks_cover_exactly_the_range(first, last, blocks):
    assert port_blocks(first, last) == blocks
    covered = {b + i for b, bits in blocks for i in range(1 << (16 - bits))}
    assert covered == set(range(first, last + 1))


def test_unselected_endpoint_gets_allow_all_defaults():
    entries = compile_endpoint(EP, [], U)
    assert entries == dict([default(False, POLICY_DEFAULT), default(True, POLICY_DEFAULT)])


def test_selected_direction_is_default_deny_and_rules_allow():
    rule = Rule(INGRESS, False, (Peer(pods=Selector.of({"app": "db"}), namespace="x"),),
                (PortRule("TCP", 80),))
    p = policy(rule)
    entries = compile_endpoint(EP, [p], U)
    assert entries[Key(7, False, 0, 0, 0, PREFIX_DEFAULT)] == Value(POLICY_DEFAULT | POLICY_DENY, 0)
    assert entries[Key(7, True, 0, 0, 0, PREFIX_DEFAULT)] == Value(POLICY_DEFAULT, 0)
    assert entries[Key(7, False, DB, 6, 80, 96)] == Value(0, rule_id(p, rule), POLICY_MATCH_L3_L4)
    assert len(entries) == 3


@pytest.mark.parametrize("identity, prefixlen, expected", [
    (DB, PREFIX_PEER, POLICY_MATCH_L3_ONLY), (0, PREFIX_PEER, POLICY_MATCH_ALL),
    (DB, PREFIX_PROTO, POLICY_MATCH_L3_PROTO), (0, PREFIX_PROTO, POLICY_MATCH_PROTO_ONLY),
    (DB, 96, POLICY_MATCH_L3_L4), (0, 96, POLICY_MATCH_L4_ONLY), (0, 81, POLICY_MATCH_L4_ONLY),
])
def test_match_type_says_whether_a_rule_names_a_peer_a_protocol_a_port(identity, prefixlen, expected):
    assert match_type(identity, prefixlen) == expected


def test_default_entries_match_nothing_in_particular():
    entries = compile_endpoint(EP, [], U)
    assert {v.match_type for v in entries.values()} == {POLICY_MATCH_NONE}


def test_policy_in_another_namespace_does_not_select():
    p = Policy("CiliumNetworkPolicy", "p", "y", Selector.of({"app": "web"}), frozenset({INGRESS}), ())
    assert compile_endpoint(EP, [p], U) == compile_endpoint(EP, [], U)


def test_deny_beats_a_more_specific_allow_of_the_same_peer():
    allow = Rule(INGRESS, False, (Peer(pods=Selector.of({"app": "db"}), namespace="x"),), (PortRule("TCP", 80),))
    deny = Rule(INGRESS, True, (Peer(pods=Selector.of({"app": "db"}), namespace="x"),), (), index=0)
    p = policy(allow, deny)
    entries = compile_endpoint(EP, [p], U)
    assert entries[Key(7, False, DB, 0, 0, PREFIX_PEER)].flags == POLICY_DENY
    # the entry is the deny's: its rule and its match type (a peer, any port)
    assert entries[Key(7, False, DB, 6, 80, 96)] == Value(POLICY_DENY, rule_id(p, deny), POLICY_MATCH_L3_ONLY)


def test_l4_only_rule_uses_identity_zero_and_any_protocol_with_a_port_expands():
    rule = Rule(INGRESS, False, (), (PortRule("ANY", 443),))
    entries = compile_endpoint(EP, [policy(rule)], U)
    assert {(k.identity, k.protocol, k.port, k.prefixlen) for k in entries if k.prefixlen == 96} == \
        {(0, 6, 443, 96), (0, 17, 443, 96), (0, 132, 443, 96)}


def test_protocol_without_port_and_icmp_type():
    entries = compile_endpoint(EP, [policy(Rule(INGRESS, False, (), (PortRule("UDP"), PortRule("ICMP", 8))))], U)
    assert Key(7, False, 0, 17, 0, PREFIX_PROTO) in entries
    assert Key(7, False, 0, 1, 8, 96) in entries


def test_named_ports_never_match():
    entries = compile_endpoint(EP, [policy(Rule(INGRESS, False, (), (PortRule("TCP", -1),)))], U)
    assert len(entries) == 2     # just the defaults: default deny stays


@pytest.mark.parametrize("peer,identities", [
    (Peer(entity="host"), {1}), (Peer(entity="world"), {2, CIDR_ID}), (Peer(entity="all"), {0}),
    (Peer(entity="cluster"), {1, WEB, DB, OTHER}),
    (Peer(cidr="198.18.0.0/16"), {CIDR_ID}), (Peer(cidr="198.18.0.0/16", except_=("198.18.0.0/23",)), set()),
    (Peer(cidr="0.0.0.0/0"), {2, CIDR_ID}),
    (Peer(pods=Selector.of({"app": "web"})), {WEB, OTHER}),
    (Peer(pods=Selector.of({"app": "web"}), namespace="x"), {WEB}),
    (Peer(namespaces=Selector.of({"team": "t"})), {OTHER}),
    (Peer(pods=Selector.of({"app": "db"}), namespaces=Selector.of({"team": "t"})), set()),
])
def test_peers_resolve_to_identities(peer, identities):
    assert U.resolve(peer) == identities


def test_audit_policy_makes_the_default_deny_an_audit():
    entries = compile_endpoint(EP, [policy(enforces=(INGRESS, EGRESS), audit=True)], U)
    assert entries[Key(7, False, 0, 0, 0, PREFIX_DEFAULT)].flags == POLICY_DEFAULT | POLICY_DENY | POLICY_AUDIT
    # one non-audit policy enforcing the direction makes it a real deny
    entries = compile_endpoint(EP, [policy(audit=True), policy(name="q")], U)
    assert entries[Key(7, False, 0, 0, 0, PREFIX_DEFAULT)].flags == POLICY_DEFAULT | POLICY_DENY


@pytest.mark.parametrize("enforcement,ingress_flags", [
    ("never", POLICY_DEFAULT), ("always", POLICY_DEFAULT | POLICY_DENY), ("default", POLICY_DEFAULT)])
def test_enforcement_modes(enforcement, ingress_flags):
    entries = compile_endpoint(EP, [], U, enforcement)
    assert entries[Key(7, False, 0, 0, 0, PREFIX_DEFAULT)].flags == ingress_flags


def test_diff_orders_allows_before_denies_and_removes_only_stale_entries():
    old = compile_endpoint(EP, [], U)
    new = compile_endpoint(EP, [policy(Rule(INGRESS, False, (), (PortRule("TCP", 80),)))], U)
    d = diff(old, new)
    assert list(d.allows) == [Key(7, False, 0, 6, 80, 96)]
    assert list(d.denies) == [Key(7, False, 0, 0, 0, PREFIX_DEFAULT)]      # the default flips to deny
    assert d.removed == []
    back = diff(new, old)
    assert back.removed == [Key(7, False, 0, 6, 80, 96)] and not back.allows
    assert diff(new, new).empty
