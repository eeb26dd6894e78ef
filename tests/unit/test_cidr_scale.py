"""CIDR peers in bulk, pure logic: prefixes read as numbers, CIDR identities shared between
policies and reference-counted, ipBlock resolution (nested prefixes, except carve-outs, /0,
/32) at allow-list sizes, the identity cursor, routed's claim count, and the policy map's
capacity reached while compiling."""
import ipaddress

import pytest

from services.datapath.maps.policy import FakePolicyMap
from services.datapath.numbers import IDENTITY_WORLD
from services.policyd import cidrs
from services.wire import prefix
from services.policyd.compiler import CIDR_LABEL, Endpoint, Universe
from services.policyd.enforcer import Enforcer, PolicyMapFull
from services.policyd.identity import FIRST_LOCAL, IdentityAllocator
from services.policyd.model import INGRESS, Peer, Policy, Rule, Selector
from services.routed.claims import Claims
from services.wire.labels import identity_labels, namespace_labels

WEB = 256


def cidr_policy(name: str, peers: list[Peer]) -> Policy:
    return Policy("NetworkPolicy", name, "x", Selector.of({"app": "web"}), frozenset({INGRESS}),
                  (Rule(INGRESS, False, tuple(peers)),))


def hosts(first: str, count: int) -> list[str]:
    start = int(ipaddress.IPv4Address(first))
    return [f"{ipaddress.IPv4Address(start + i)}/32" for i in range(count)]


def universe_of(allocator: IdentityAllocator) -> Universe:
    return Universe({i: e.labels for i, e in allocator.by_id.items()})


def cidr_ids(allocator: IdentityAllocator) -> dict[str, int]:
    return {c: e.id for c, e in cidrs.cidr_entries(allocator).items()}


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.0/8", (10 << 24, 8)), ("0.0.0.0/0", (0, 0)), ("255.255.255.255/32", (0xFFFFFFFF, 32)),
    ("010.0.0.0/8", None), ("10.0.0.0/33", None), ("10.0.0/8", None), ("256.0.0.0/8", None), ("10.0.0.0", None),
])
def test_plain_prefixes_read_as_numbers_and_other_forms_are_left_to_ipaddress(text, expected):
    assert prefix.parse(text) == expected


def test_bounds_clear_host_bits():
    assert prefix.bounds("10.1.2.3/16") == (0x0A010000, 0x0A01FFFF, 16)
    assert prefix.network("10.1.2.3/16") == ipaddress.IPv4Network("10.1.0.0/16")


def test_two_policies_share_each_cidr_identity_and_only_the_last_release_removes_it():
    allocator = IdentityAllocator()
    shared, only_a = hosts("192.0.2.0", 50), hosts("198.51.100.0", 200)
    a = cidr_policy("a", [Peer(cidr=c) for c in shared + only_a])
    b = cidr_policy("b", [Peer(cidr=c) for c in shared])
    released, created = cidrs.resolve(allocator, {a.key: a, b.key: b})
    assert not released and len(created) == len(set(shared + only_a))
    ids = cidr_ids(allocator)

    released, created = cidrs.resolve(allocator, {b.key: b})          # a deleted
    assert not created and {cidrs.cidr_of(e) for e in released} == set(only_a)
    assert cidr_ids(allocator) == {c: ids[c] for c in shared}          # same numbers kept

    released, created = cidrs.resolve(allocator, {})                  # b deleted too
    assert {cidrs.cidr_of(e) for e in released} == set(shared) and cidr_ids(allocator) == {}


def test_except_carve_outs_at_scale():
    """A /16 minus 1,000 /30s: the /32 peers of another policy inside a carved /30 are not
    selected by the /16, those outside are, and the /16's own identity is."""
    carved = [f"10.9.{i // 64}.{i % 64 * 4}/30" for i in range(1000)]
    inside = hosts("10.9.0.1", 2000)                   # the first 2,000 addresses of the /16
    allocator = IdentityAllocator()
    block = cidr_policy("block", [Peer(cidr="10.9.0.0/16", except_=tuple(carved))])
    peers = cidr_policy("peers", [Peer(cidr=c) for c in inside])
    cidrs.resolve(allocator, {block.key: block, peers.key: peers})
    ids = cidr_ids(allocator)
    selected = universe_of(allocator).resolve(block.rules[0].peers[0])
    carved_nets = [ipaddress.IPv4Network(c) for c in carved]
    for host in inside:
        is_carved = any(ipaddress.IPv4Network(host).subnet_of(n) for n in carved_nets)
        assert (ids[host] in selected) is not is_carved, host
    assert ids["10.9.0.0/16"] in selected
    assert not any(ids[c] in selected for c in carved)


def test_nested_prefixes_zero_and_host_routes_resolve_as_cilium_does():
    allocator = IdentityAllocator()
    policy = cidr_policy("p", [Peer(cidr=c) for c in ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "11.0.0.0/8")])
    cidrs.resolve(allocator, {policy.key: policy})
    ids, universe = cidr_ids(allocator), universe_of(allocator)
    assert universe.resolve(Peer(cidr="10.0.0.0/8")) == {ids["10.0.0.0/8"], ids["10.1.0.0/16"], ids["10.1.2.3/32"]}
    assert universe.resolve(Peer(cidr="10.1.2.3/32")) == {ids["10.1.2.3/32"]}
    assert universe.resolve(Peer(cidr="0.0.0.0/0")) == {IDENTITY_WORLD, *ids.values()}
    assert universe.resolve(Peer(cidr="0.0.0.0/0", except_=("10.0.0.0/8",))) == {ids["11.0.0.0/8"]}


def test_local_identities_reach_past_65536_and_reuse_released_numbers():
    allocator = IdentityAllocator()
    entries = [allocator.allocate({f"{CIDR_LABEL}{c}": ""}, "policies", local=True)[0]
               for c in hosts("100.64.0.1", 70000)]
    assert entries[-1].id == FIRST_LOCAL + 69999
    allocator.release(entries[10].id, "policies")
    again, created = allocator.allocate({f"{CIDR_LABEL}192.0.2.1/32": ""}, "policies", local=True)
    assert created and again.id == entries[10].id


def test_a_plan_past_the_map_capacity_is_refused_while_compiling():
    allocator = IdentityAllocator()
    allocator.restore(cidrs.Entry(WEB, identity_labels({"app": "web"}, "x", namespace_labels("x", {})), {"pod"}))
    policy = cidr_policy("big", [Peer(cidr=c) for c in hosts("100.64.0.1", 3000)])
    cidrs.resolve(allocator, {policy.key: policy})
    fake = FakePolicyMap()
    enforcer = Enforcer(fake, 1000, "default", {1: Endpoint(1, WEB)})
    with pytest.raises(PolicyMapFull, match="maps.policy"):
        enforcer.plan([policy], universe_of(allocator))
    assert fake.entries == {} and fake.ops == []


def test_routed_counts_its_entries_from_the_claims_and_lists_only_shadowed_ones():
    claims = Claims()
    for i in range(1000):
        claims.claim(f"10.0.{i // 256}.{i % 256}/32", "cidr-policy", FIRST_LOCAL + i)
    claims.claim("10.0.0.5/32", "endpoint", 300)
    assert len(claims) == 1000
    assert claims.shadowed() == [("10.0.0.5/32", "cidr-policy", FIRST_LOCAL + 5)]
    claims.release("10.0.0.5/32", "endpoint")
    assert claims.shadowed() == [] and len(claims) == 1000
    claims.release("10.0.0.5/32", "cidr-policy")
    assert len(claims) == 999


def test_only_policies_that_can_name_a_pod_as_peer_are_replanned_for_a_new_pod_identity():
    from services.policyd.compiler import names_as_peer
    db = identity_labels({"app": "db"}, "x", namespace_labels("x", {}))
    by_pods = Policy("CiliumNetworkPolicy", "p", "x", Selector.of({"app": "web"}), frozenset({INGRESS}),
                     (Rule(INGRESS, False, (Peer(pods=Selector.of({"app": "db"}), namespace="x"),)),))
    by_cluster = cidr_policy("c", [Peer(entity="cluster")])
    by_cidr = cidr_policy("d", [Peer(cidr="10.0.0.0/8")])
    open_to_all = cidr_policy("e", [])
    assert names_as_peer(by_pods, db) and names_as_peer(by_cluster, db)
    assert not names_as_peer(by_cidr, db) and not names_as_peer(open_to_all, db)
    assert not names_as_peer(by_pods, identity_labels({"app": "db"}, "y", namespace_labels("y", {})))
