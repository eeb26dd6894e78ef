"""Large policy changes without per-entry work, pure logic: what a change staged against
older state may still commit (the change log, the policies a CIDR identity change reaches),
the packed map layouts against the ctypes structs, the one-pass list checks of messages,
the key a policy document will have, and the /32 shortcut of peer resolution."""
import ipaddress

import pytest

from services.datapath.maps import ipcache
from services.datapath.maps.policy import PREFIX_DEFAULT, PREFIX_PEER, PREFIX_PORT_BASE, Key, _key_bytes
from services.policyd import cidrs
from services.policyd.compiler import Universe
from services.policyd.identity import CIDR_LABEL, IdentityAllocator
from services.policyd.model import INGRESS, PackedDocument, Peer, Policy, Rule, Selector, plain_document
from services.policyd.parse import parse_policy, policy_key_of
from services.policyd.staging import ChangeLog, PrefixSet, widen
from services.wire import codec
from services.wire.messages import IpcacheBatch, SchemaError


def policy(name: str, peers: list[Peer]) -> Policy:
    return Policy("NetworkPolicy", name, "x", Selector.of({"app": name}), frozenset({INGRESS}),
                  (Rule(INGRESS, False, tuple(peers)),))


def test_a_staged_change_survives_changes_to_other_endpoints_only():
    log = ChangeLog()
    log.bump()                                    # an unknown change
    version = log.version
    log.bump(frozenset({2}))                      # a policy change on endpoint 2
    assert log.untouched_since(version, frozenset({1}))
    assert not log.untouched_since(version, frozenset({1, 2}))
    assert not log.untouched_since(version, None)  # a plan of every endpoint needs no change at all
    log.bump()                                    # an identity or the endpoint record
    assert not log.untouched_since(version, frozenset({1}))
    assert log.untouched_since(log.version, None)


def test_old_changes_fall_out_of_the_log_and_then_count_as_conflicts():
    log = ChangeLog()
    for _ in range(ChangeLog.KEEP + 1):
        log.bump(frozenset({9}))
    assert not log.untouched_since(0, frozenset({1}))
    assert log.untouched_since(log.version - 10, frozenset({1}))


def test_new_cidr_identities_reach_the_policies_whose_peers_contain_them_and_no_other():
    allocator = IdentityAllocator()
    made = [allocator.allocate({f"{CIDR_LABEL}100.64.0.1/32": ""}, "policies", local=True)[0]]
    mine = policy("big", [Peer(cidr="100.64.0.1/32")])
    wide = policy("wide", [Peer(cidr="100.64.0.0/10", except_=("100.64.0.0/24",))])
    world = policy("world", [Peer(entity="world")])
    elsewhere = policy("elsewhere", [Peer(cidr="198.18.0.0/15")])
    pods = policy("pods", [Peer(pods=Selector.of({"app": "x"}), namespace="x")])
    everything = {p.key: p for p in (mine, wide, world, elsewhere, pods)}
    assert [p.name for p in widen([mine], everything, [], made)] == ["big", "wide", "world"]
    assert [p.name for p in widen([mine], everything, made, [])] == ["big", "wide", "world"]
    assert widen([mine], everything, [], []) == [mine]


def test_a_prefix_set_finds_prefixes_inside_a_prefix_not_around_it():
    index = PrefixSet(["10.1.0.0/16", "192.0.2.7/32"])
    assert index.any_within("10.0.0.0/8") and index.any_within("10.1.0.0/16") and index.any_within("0.0.0.0/0")
    assert not index.any_within("10.1.2.0/24")          # inside 10.1.0.0/16, which is not inside it
    assert index.any_within("192.0.2.0/24") and not index.any_within("192.0.2.8/29")


@pytest.mark.parametrize("key", [
    Key(1, False, 0, 0, 0, PREFIX_DEFAULT), Key(65535, True, (1 << 24) + 5, 6, 8080, PREFIX_PORT_BASE + 16),
    Key(300, False, 256, 17, 0x1200, PREFIX_PORT_BASE + 7), Key(7, True, 0xFFFFFFFF, 0, 0, PREFIX_PEER)])
def test_packed_policy_keys_are_the_bytes_of_the_struct(key):
    assert _key_bytes(key) == bytes(key.raw())


def test_a_packed_policy_key_that_does_not_fit_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="endpoint_id"):
        _key_bytes(Key(65536, False, 0, 0, 0, PREFIX_DEFAULT))


@pytest.mark.parametrize("cidr", ["10.1.2.3/32", "10.1.2.3/16", "0.0.0.0/0", "255.255.255.255/32", "10.1.0.0/016"])
def test_packed_ipcache_keys_are_those_ipaddress_gives(cidr):
    net = ipaddress.IPv4Network(cidr, strict=False)
    assert bytes(ipcache.key_for(cidr)) == net.prefixlen.to_bytes(4, "little") + net.network_address.packed
    key, value = ipcache._packed(cidr, (1 << 24) + 1, 4, "")
    assert key == bytes(ipcache.key_for(cidr)) and value == bytes(ipcache.info_for((1 << 24) + 1, 4))


def test_a_long_list_is_checked_in_one_pass_and_a_bad_item_is_still_named():
    cidrs_ = [f"10.0.{i // 256}.{i % 256}/32" for i in range(5000)]
    batch = IpcacheBatch.from_wire(IpcacheBatch("cidr-policy", cidrs_, list(range(1, 5001))).to_wire())
    assert batch.cidrs == cidrs_ and batch.identities[-1] == 5000
    with pytest.raises(SchemaError, match=r"identities\[3\]: -1 is out of range"):
        IpcacheBatch.from_wire(IpcacheBatch("cidr-policy", cidrs_[:5], [1, 2, 3, -1, 5]).to_wire())
    with pytest.raises(SchemaError, match=r"cidrs\[1\]: expected str"):
        IpcacheBatch.from_wire({**IpcacheBatch("cidr-policy").to_wire(), "cidrs": ["a", 1], "identities": [1, 2]})
    with pytest.raises(SchemaError, match=r"identities\[0\]: expected int"):
        IpcacheBatch.from_wire({**IpcacheBatch("cidr-policy").to_wire(), "cidrs": ["a"], "identities": [True]})


@pytest.mark.parametrize("doc", [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a"},
     "spec": {"podSelector": {}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a", "namespace": "n"},
     "spec": {"podSelector": {}}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "a", "namespace": "n"},
     "spec": {"endpointSelector": {}, "ingress": [{}]}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "a"},
     "spec": {"endpointSelector": {}, "ingress": [{}]}},
])
def test_the_key_read_before_parsing_is_the_parsed_policys(doc):
    assert policy_key_of(doc) == parse_policy(doc).policy.key


def test_host_route_peers_resolve_to_their_own_identity_as_a_search_would():
    allocator = IdentityAllocator()
    peers = [Peer(cidr=c) for c in ("192.0.2.1/32", "192.0.2.2/32", "192.0.2.0/30")]
    cidrs.resolve(allocator, {"p": policy("p", peers)})
    universe = Universe({i: e.labels for i, e in allocator.by_id.items()})
    searched = set().union(*(universe.resolve(p) for p in peers))
    assert universe.resolve_all(tuple(peers)) == searched and len(searched) == 3


def test_a_copied_allocator_shares_its_entries_until_one_side_changes_them():
    allocator = IdentityAllocator()
    entry, _ = allocator.allocate({"k8s:app": "a"}, "ep1")
    trial = allocator.copy()
    assert trial.by_id[entry.id] is entry
    trial.allocate({"k8s:app": "a"}, "ep2")
    trial.release(entry.id, "ep1")
    assert allocator.by_id[entry.id].owners == {"ep1"} and trial.by_id[entry.id].owners == {"ep2"}


def test_an_owned_document_is_kept_packed_and_a_lent_one_is_copied():
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a"},
           "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}}
    lent = parse_policy(doc).policy
    assert lent.document["spec"] == doc["spec"] and lent.document["spec"] is not doc["spec"]
    owned = parse_policy(doc, owned=True).policy
    assert isinstance(owned.document, PackedDocument) and codec.decode(owned.document.raw) == lent.document
    assert owned.document == lent.document and lent.document == owned.document
    assert plain_document(owned.document) == lent.document
    assert owned == lent and parse_policy(plain_document(owned.document)).policy.document == owned.document
