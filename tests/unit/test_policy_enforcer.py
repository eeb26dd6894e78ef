"""The Enforcer: a pure planner over policyd's record of endpoints and a policy map object
(the dict-backed fake here). Unknown endpoints are left alone; only the record says who is gone."""
import pytest

from services.datapath.maps.policy import PREFIX_DEFAULT, FakePolicyMap, Key, Value
from services.datapath.numbers import POLICY_DEFAULT, POLICY_DENY
from services.policyd.compiler import Endpoint, Universe, compile_endpoint
from services.policyd.enforcer import Enforcer, PolicyMapFull
from services.policyd.model import INGRESS, Peer, Policy, PortRule, Rule, Selector
from services.wire.labels import identity_labels, namespace_labels

WEB, DB = 256, 257
U = Universe({WEB: identity_labels({"app": "web"}, "x", namespace_labels("x", {})),
              DB: identity_labels({"app": "db"}, "x", namespace_labels("x", {}))})
DB_TO_WEB_80 = Policy("CiliumNetworkPolicy", "web", "x", Selector.of({"app": "web"}), frozenset({INGRESS}),
                      (Rule(INGRESS, False, (Peer(pods=Selector.of({"app": "db"}), namespace="x"),),
                            (PortRule("TCP", 80),)),))


def entries_of(fake: FakePolicyMap, ep_id: int) -> dict[Key, Value]:
    return {k: c.value for k, c in fake.all().items() if k.endpoint_id == ep_id}


def enforcer(endpoints: dict[int, Endpoint], fake: FakePolicyMap | None = None, capacity=1000) -> Enforcer:
    return Enforcer(fake or FakePolicyMap(), capacity, "default", endpoints)


def test_a_full_plan_writes_every_recorded_endpoint():
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB), 2: Endpoint(2, DB)}, fake)
    diffs, total = enf.plan([DB_TO_WEB_80], U)
    enf.apply(diffs)
    assert entries_of(fake, 1) == compile_endpoint(Endpoint(1, WEB), [DB_TO_WEB_80], U)
    assert entries_of(fake, 2) == compile_endpoint(Endpoint(2, DB), [DB_TO_WEB_80], U)
    assert total == len(fake.all()) == enf.entry_count


def test_restart_with_the_same_record_changes_nothing():
    fake = FakePolicyMap()
    first = enforcer({1: Endpoint(1, WEB)}, fake)
    first.apply(first.plan([DB_TO_WEB_80], U)[0])
    fake.ops.clear()
    again = enforcer({1: Endpoint(1, WEB)}, fake)
    diffs, _ = again.plan([DB_TO_WEB_80], U)
    assert diffs == {} and fake.ops == []


def test_entries_of_an_endpoint_not_in_the_record_are_removed_by_a_full_plan_only():
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB), 2: Endpoint(2, DB)}, fake)
    enf.apply(enf.plan([DB_TO_WEB_80], U)[0])
    del enf.endpoints[2]
    diffs, _ = enf.plan([DB_TO_WEB_80], U, only={1})          # a change for endpoint 1
    assert 2 not in diffs
    diffs, _ = enf.plan([DB_TO_WEB_80], U)
    enf.apply(diffs)
    assert entries_of(fake, 2) == {} and entries_of(fake, 1)


def test_an_empty_record_never_comes_from_a_missing_endpoint_map():
    """The planner reads no other map: the record it is given is all it knows."""
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB)}, fake)
    enf.apply(enf.plan([DB_TO_WEB_80], U)[0])
    diffs, _ = enf.plan([DB_TO_WEB_80], U, changed=[DB_TO_WEB_80])
    assert diffs == {} and entries_of(fake, 1)


def test_only_an_id_missing_from_the_record_loses_its_entries():
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB), 2: Endpoint(2, DB)}, fake)
    enf.apply(enf.plan([DB_TO_WEB_80], U)[0])
    del enf.endpoints[1]
    diffs, total = enf.plan([DB_TO_WEB_80], U, only={1})
    assert set(diffs) == {1} and len(diffs[1].removed) == 3
    enf.apply(diffs)
    assert entries_of(fake, 1) == {} and total == enf.entry_count == len(entries_of(fake, 2))


def test_a_changed_policy_recompiles_only_the_endpoints_it_selects():
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB), 2: Endpoint(2, DB)}, fake)
    enf.apply(enf.plan([], U)[0])
    diffs, _ = enf.plan([DB_TO_WEB_80], U, changed=[DB_TO_WEB_80])
    assert set(diffs) == {1}


def test_writes_go_allows_then_denies_then_removals():
    fake = FakePolicyMap()
    enf = enforcer({1: Endpoint(1, WEB)}, fake)
    enf.apply(enf.plan([DB_TO_WEB_80], U)[0])
    fake.ops.clear()
    enf.apply(enf.plan([], U)[0])                            # back to default allow
    kinds = [op for op, _ in fake.ops]
    assert kinds == ["write", "delete"]
    assert fake.all()[Key(1, False, 0, 0, 0, PREFIX_DEFAULT)].value == Value(POLICY_DEFAULT, 0)
    fake.ops.clear()
    enf.apply(enf.plan([DB_TO_WEB_80], U)[0])
    written = [k for op, k in fake.ops if op == "write"]
    assert written[-1] == Key(1, False, 0, 0, 0, PREFIX_DEFAULT)   # the default deny comes last
    assert fake.all()[written[-1]].value.flags == POLICY_DEFAULT | POLICY_DENY


def test_capacity_counts_the_whole_map():
    enf = enforcer({1: Endpoint(1, WEB), 2: Endpoint(2, DB)}, capacity=5)
    diffs, total = enf.plan([DB_TO_WEB_80], U)
    assert total == 5
    enf.check_capacity(total)
    enf.apply(diffs)
    enf.endpoints[3] = Endpoint(3, WEB)
    _, total = enf.plan([DB_TO_WEB_80], U, only={3})
    with pytest.raises(PolicyMapFull, match="would hold 8 entries, more than its 5"):
        enf.check_capacity(total)
