"""Fuzz targets for policies: the parser (any document: a policy or a PolicyError naming a
field; an accepted policy's canonical form parses to the same policy with no warning) and
the compiler, checked against reference models (tests/fuzz/policy_reference.py): for random
policies, identities and packets, the datapath's lookup over the compiled entries gives the
verdict the policies' semantics give."""
from __future__ import annotations

import copy
import ipaddress

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.datapath.numbers import IDENTITY_HOST, IDENTITY_WORLD
from services.policyd.compiler import Endpoint, Universe, compile_endpoint
from services.policyd.model import DIRECTIONS, EGRESS
from services.policyd.parse import PolicyError, parse_policy
from services.wire.labels import identity_labels, namespace_labels
from tests.fuzz.conftest import budget, count
from tests.fuzz.policy_reference import datapath_verdict, semantic_verdict
from tests.fuzz.strategies import deep, mutate, trees

NAMESPACES = {"x": {"team": "red"}, "y": {"team": "blue"}}
APPS = ("a", "b", "c")
CIDRS = ("10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "192.168.0.0/16", "8.8.8.8/32", "0.0.0.0/0")
# CIDR identities: one per CIDR the policies can name, as policyd allocates them (and one more).
CIDR_IDENTITIES = {(1 << 24) + i: {f"cidr:{c}": ""} for i, c in enumerate(CIDRS[:-1] + ("172.16.0.0/12",))}
PODS = [(ns, app) for ns in NAMESPACES for app in APPS[:2]]
IDENTITIES = {256 + i: identity_labels({"app": app}, ns, namespace_labels(ns, NAMESPACES[ns]))
              for i, (ns, app) in enumerate(PODS)}
UNIVERSE_IDS = {IDENTITY_HOST: {"reserved:host": ""}, IDENTITY_WORLD: {"reserved:world": ""},
                **IDENTITIES, **CIDR_IDENTITIES}
PACKETS = [(proto, port) for proto in (6, 17, 132) for port in (80, 81, 443, 1000)] + \
          [(1, 0), (1, 8), (1, 3), (47, 0)]


# ---- random policies from a small vocabulary, so most of them are valid ---------------------

def selectors(sourced: bool):
    key = st.sampled_from(["app", "k8s:app"] if sourced else ["app"])
    exprs = st.fixed_dictionaries({"key": key, "operator": st.sampled_from(["In", "NotIn"]),
                                   "values": st.lists(st.sampled_from(APPS), min_size=1, max_size=2)}) | \
        st.fixed_dictionaries({"key": key, "operator": st.sampled_from(["Exists", "DoesNotExist"])})
    return st.fixed_dictionaries({}, optional={
        "matchLabels": st.dictionaries(key, st.sampled_from(APPS), max_size=1),
        "matchExpressions": st.lists(exprs, max_size=2)})


def port_entries(protocols):
    port = st.sampled_from([80, 81, 443, 0, "80", "http", 1000])
    return st.fixed_dictionaries({"port": port}, optional={
        "protocol": st.sampled_from(protocols), "endPort": st.sampled_from([81, 443, 2000, 65535])})


def cilium_rules(direction: str):
    side = "from" if direction == "ingress" else "to"
    cidr_set = st.fixed_dictionaries({"cidr": st.sampled_from(CIDRS)},
                                     optional={"except": st.lists(st.sampled_from(CIDRS[1:5]), max_size=2)})
    peers = st.one_of(
        st.just({}),
        st.fixed_dictionaries({f"{side}Endpoints": st.lists(selectors(True), min_size=1, max_size=2)}),
        st.fixed_dictionaries({f"{side}Entities": st.lists(
            st.sampled_from(["host", "world", "all", "cluster"]), min_size=1, max_size=2)}),
        st.fixed_dictionaries({f"{side}CIDR": st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2)}),
        st.fixed_dictionaries({f"{side}CIDRSet": st.lists(cidr_set, min_size=1, max_size=2)}))
    l4 = st.one_of(
        st.just({}),
        st.fixed_dictionaries({"toPorts": st.lists(st.fixed_dictionaries({"ports": st.lists(
            port_entries(["TCP", "UDP", "SCTP", "ANY"]), min_size=1, max_size=2)}), min_size=1, max_size=2)}),
        st.fixed_dictionaries({"icmps": st.lists(st.fixed_dictionaries({"fields": st.lists(
            st.fixed_dictionaries({"type": st.sampled_from([0, 8, 3])}), min_size=1, max_size=2)}),
            min_size=1, max_size=1)}))
    return st.tuples(peers, l4).map(lambda pair: {**pair[0], **pair[1]})


@st.composite
def cilium_policies(draw, name: str):
    spec = {"endpointSelector": draw(selectors(True))}
    for key in ("ingress", "ingressDeny", "egress", "egressDeny"):
        rules = draw(st.lists(cilium_rules(key.removesuffix("Deny")), max_size=2))
        if rules:
            spec[key] = rules
    if not any(k in spec for k in ("ingress", "ingressDeny", "egress", "egressDeny")):
        spec["ingress"] = [{}]
    if draw(st.booleans()):
        spec["enableDefaultDeny"] = draw(st.fixed_dictionaries({}, optional={
            "ingress": st.booleans(), "egress": st.booleans()}))
    kind = draw(st.sampled_from(["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"]))
    meta = {"name": name}
    if kind == "CiliumNetworkPolicy":
        meta["namespace"] = draw(st.sampled_from(list(NAMESPACES)))
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec}


@st.composite
def network_policies(draw, name: str):
    ip_block = st.fixed_dictionaries({"cidr": st.sampled_from(CIDRS)},
                                     optional={"except": st.lists(st.sampled_from(CIDRS[1:5]), max_size=1)})
    peer = st.one_of(
        st.fixed_dictionaries({"podSelector": selectors(False)}),
        st.fixed_dictionaries({"namespaceSelector": st.just({"matchLabels": {"team": "red"}}) | st.just({})},
                              optional={"podSelector": selectors(False)}),
        st.fixed_dictionaries({"ipBlock": ip_block}))
    spec: dict = {"podSelector": draw(selectors(False))}
    for key, side in (("ingress", "from"), ("egress", "to")):
        rules = draw(st.lists(st.fixed_dictionaries({}, optional={
            side: st.lists(peer, max_size=2), "ports": st.lists(port_entries(["TCP", "UDP", "SCTP"]), max_size=2)}),
            max_size=2))
        if rules or draw(st.booleans()):
            spec[key] = rules
    if draw(st.booleans()):
        spec["policyTypes"] = draw(st.lists(st.sampled_from(["Ingress", "Egress"]), min_size=1,
                                            max_size=2, unique=True))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(list(NAMESPACES)))}, "spec": spec}


def policies(name: str = "p"):
    return st.one_of(cilium_policies(name), network_policies(name))


def parsed(doc: dict):
    try:
        return parse_policy(doc)
    except PolicyError as exc:
        assert exc.path and exc.where, exc
        return None


# ---- the parser --------------------------------------------------------------------------

@settings(max_examples=budget(150))
@given(data=st.data())
@example(data=None)
def test_any_policy_document_parses_or_is_a_policy_error_and_canonical_forms_are_stable(data):
    count("policy.parse(mutated)")
    if data is None:        # found: RecursionError, ValueError (4,300 digits), unbounded size
        for doc in ({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
                     "spec": {"endpointSelector": {}, "ingress": [{}], "description": deep(3000)}},
                    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
                     "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 10 ** 5000}]}]}]}},
                    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
                     "spec": {"endpointSelector": {}, "ingress": [{"toCIDR": ["10.0.0.0/8"] * 5000}]}}):
            assert parsed(doc) is None
        return
    doc = data.draw(policies())
    if data.draw(st.booleans()):
        doc = mutate(doc, data)
    result = parsed(copy.deepcopy(doc))
    if result is None:
        return
    again = parse_policy(copy.deepcopy(result.policy.document))
    assert again.policy == result.policy and not again.warnings


@settings(max_examples=budget(200))
@given(trees(max_leaves=40))
def test_random_trees_are_policy_errors(tree):
    count("policy.parse(random)")
    if isinstance(tree, dict) and tree:
        tree.setdefault("apiVersion", "cilium.io/v2")
        tree.setdefault("kind", "CiliumNetworkPolicy")
    try:
        parse_policy(tree)
    except PolicyError:
        pass


# ---- the compiler against the reference models -------------------------------------------------

@settings(max_examples=budget(100))
@given(docs=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=3).flatmap(
           lambda seeds: st.tuples(*(policies(f"p{i}") for i in range(len(seeds))))),
       audit=st.sets(st.sampled_from(sorted(IDENTITIES)), max_size=2))
def test_compiled_entries_give_the_verdicts_the_policies_mean(docs, audit):
    count("policy.compile vs reference")
    compiled = [p.policy for p in map(parsed, docs) if p is not None]
    universe = Universe(UNIVERSE_IDS)
    wrong = []
    for endpoint_id, identity in enumerate(sorted(IDENTITIES), start=1):
        ep = Endpoint(endpoint_id, identity, audit=identity in audit)
        entries = compile_endpoint(ep, compiled, universe)
        for direction in DIRECTIONS:
            for peer in UNIVERSE_IDS:
                for proto, port in PACKETS:
                    got = datapath_verdict(entries, endpoint_id, direction == EGRESS, peer, proto, port)
                    want = semantic_verdict(compiled, IDENTITIES[identity], ep.audit, direction, peer,
                                            proto, port, UNIVERSE_IDS)
                    if got != want:
                        wrong.append(f"{IDENTITIES[identity]['k8s:app']}@{identity} {direction} peer {peer} "
                                     f"proto {proto} port {port}: datapath {got}, policies {want}")
    assert not wrong, f"{len(wrong)} verdicts differ, e.g.\n" + "\n".join(wrong[:10])


def test_the_reference_models_tell_a_deny_from_an_allow():
    """The models are not vacuous: one policy, checked by hand."""
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "b"}}],
                                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
                    "ingressDeny": [{"fromCIDR": ["10.1.2.0/24"]}]}}
    policy = parse_policy(doc).policy
    a, b = 256, 257                     # x/a, x/b
    entries = compile_endpoint(Endpoint(1, a), [policy], Universe(UNIVERSE_IDS))
    cidr = next(i for i, labels in CIDR_IDENTITIES.items() if "cidr:10.1.2.0/24" in labels)
    assert datapath_verdict(entries, 1, False, b, 6, 80) == "FORWARDED"
    assert datapath_verdict(entries, 1, False, b, 6, 81) == "DROPPED"
    assert datapath_verdict(entries, 1, False, cidr, 6, 80) == "DROPPED"
    assert datapath_verdict(entries, 1, True, b, 17, 53) == "FORWARDED"
    assert semantic_verdict([policy], IDENTITIES[a], False, "ingress", b, 6, 80, UNIVERSE_IDS) == "FORWARDED"
    assert semantic_verdict([policy], IDENTITIES[a], False, "ingress", b, 6, 81, UNIVERSE_IDS) == "DROPPED"
    assert ipaddress.IPv4Network("10.1.2.128/25").subnet_of(ipaddress.IPv4Network("10.1.2.0/24"))
