"""A stored policy that no longer parses or compiles fails closed: a stand-in holds the
endpoints it selected at default deny in both directions and allows nothing."""
from services.datapath.numbers import POLICY_DEFAULT, POLICY_DENY
from services.policyd.compiler import Endpoint, Universe, compile_endpoint
from services.policyd.stored import load
from services.wire.labels import identity_labels, namespace_labels

WEB, DB, OTHER_NS = 256, 257, 258
U = Universe({WEB: identity_labels({"app": "web"}, "x", namespace_labels("x", {})),
              DB: identity_labels({"app": "db"}, "x", namespace_labels("x", {})),
              OTHER_NS: identity_labels({"app": "web"}, "y", namespace_labels("y", {}))})
GOOD = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web", "namespace": "x"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}


def broken(**spec_changes) -> dict:
    doc = {**GOOD, "spec": {**GOOD["spec"], **spec_changes}}
    return doc


def denied_both_ways(policy, identity) -> bool:
    entries = compile_endpoint(Endpoint(1, identity), [policy], U)
    return len(entries) == 2 and all(v.flags == POLICY_DEFAULT | POLICY_DENY for v in entries.values())


def allowed_both_ways(policy, identity) -> bool:
    entries = compile_endpoint(Endpoint(1, identity), [policy], U)
    return all(v.flags == POLICY_DEFAULT for v in entries.values())


def test_a_good_policy_loads_as_itself():
    stored = load("k", GOOD, U)
    assert stored.problem is None and stored.policy.rules


def test_a_policy_with_a_bad_rule_holds_what_its_selector_selects_at_default_deny():
    stored = load("k", broken(ingress=[{"fromEndpoints": "not a list"}]), U)
    assert stored.problem and "fromEndpoints" in stored.problem
    assert stored.policy.key == "CiliumNetworkPolicy/x/web" and stored.policy.rules == ()
    assert denied_both_ways(stored.policy, WEB)
    assert allowed_both_ways(stored.policy, DB) and allowed_both_ways(stored.policy, OTHER_NS)


def test_an_unreadable_selector_falls_back_to_the_whole_namespace():
    stored = load("k", broken(endpointSelector={"matchLabels": ["bad"]}), U)
    assert denied_both_ways(stored.policy, WEB) and denied_both_ways(stored.policy, DB)
    assert allowed_both_ways(stored.policy, OTHER_NS)


def test_a_clusterwide_policy_falls_back_to_every_endpoint():
    doc = {**broken(endpointSelector=7), "kind": "CiliumClusterwideNetworkPolicy",
           "metadata": {"name": "all"}}
    stored = load("k", doc, U)
    assert all(denied_both_ways(stored.policy, i) for i in (WEB, DB, OTHER_NS))


def test_an_unreadable_namespace_or_document_falls_back_to_every_endpoint():
    stored = load("k", {**GOOD, "metadata": {"name": "web", "namespace": ["x"]}}, U)
    assert denied_both_ways(stored.policy, WEB) and denied_both_ways(stored.policy, OTHER_NS)
    assert allowed_both_ways(stored.policy, DB)               # its selector still reads
    stored = load("k", {**broken(endpointSelector=None), "metadata": {"name": "web", "namespace": 5}}, U)
    assert all(denied_both_ways(stored.policy, i) for i in (WEB, DB, OTHER_NS))
    stored = load("some.key", ["not", "a", "mapping"], U)
    assert stored.problem and stored.policy.name == "some.key"
    assert all(denied_both_ways(stored.policy, i) for i in (WEB, DB, OTHER_NS))


def denied_entirely(policy, identity) -> bool:
    """Every peer and port denied outright, in both directions: no other policy's allow wins."""
    entries = compile_endpoint(Endpoint(1, identity), [policy], U)
    return len(entries) >= 2 and all(v.flags & POLICY_DENY for v in entries.values()) and \
        any(not v.flags & POLICY_DEFAULT for v in entries.values())


def test_a_broken_policy_with_deny_rules_denies_everything_for_what_it_selects():
    stored = load("k", broken(ingressDeny=[{"fromEndpoints": "not a list"}]), U)
    assert stored.problem and "ingressDeny" in stored.problem
    assert denied_entirely(stored.policy, WEB)
    allow_all = load("k2", {**GOOD, "metadata": {"name": "open", "namespace": "x"},
                            "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["all"]}],
                                     "egress": [{"toEntities": ["all"]}]}}, U).policy
    entries = compile_endpoint(Endpoint(1, WEB), [stored.policy, allow_all], U)
    assert entries and all(v.flags & POLICY_DENY for v in entries.values())
    assert allowed_both_ways(stored.policy, DB)
    assert not denied_entirely(load("k", broken(ingress=[{"fromEndpoints": "x"}]), U).policy, WEB)


def test_a_document_the_parser_crashes_on_fails_closed():
    deep: dict = {}
    cursor = deep
    for _ in range(5000):
        cursor["matchLabels"] = {}
        cursor = cursor["matchLabels"]
    stored = load("k", broken(ingress=[{"fromEndpoints": [deep]}]), U)
    assert stored.problem and denied_both_ways(stored.policy, WEB)
