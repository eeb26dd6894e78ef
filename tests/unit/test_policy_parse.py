"""Policy documents -> model.Policy: the semantics of each kind, the seed article's shorthand,
and selector/peer matching on identity labels. Errors are in test_policy_parse_errors.py."""
from __future__ import annotations

import copy

import pytest
import yaml

from services.policyd.fields import NAMED_PORT
from services.policyd.model import (EGRESS, INGRESS, Peer, Policy, PortRule, Requirement, Rule,
                                    Selector)
from services.policyd.parse import POLICY_KINDS, parse_policy

S = Selector.of
ALL = Selector()
NS = "shop"


def np(spec: dict, **meta) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": NS, **meta}, "spec": spec}


def cnp(spec: dict, **meta) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": NS, **meta}, "spec": spec}


def ccnp(spec: dict, **meta) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "p", **meta}, "spec": spec}


def parse(doc: dict) -> Policy:
    """Parse DOC, which uses no shorthand, and check the canonical form round-trips."""
    before = copy.deepcopy(doc)
    parsed = parse_policy(doc)
    assert parsed.warnings == []
    assert doc == before, "parse_policy must not modify its input"
    again = parse_policy(parsed.policy.document)
    assert again.policy == parsed.policy and again.warnings == []
    return parsed.policy


def web(ingress=None, egress=None, **more) -> dict:
    """A Cilium rule object for app=web with the given lists."""
    spec: dict = {"endpointSelector": {"matchLabels": {"app": "web"}}, **more}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return spec


def test_policy_kinds():
    assert POLICY_KINDS == {("networking.k8s.io/v1", "NetworkPolicy"),
                            ("cilium.io/v2", "CiliumNetworkPolicy"),
                            ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
                            ("cilium.io/v1", "CiliumNetworkPolicy"),
                            ("cilium.io/v1", "CiliumClusterwideNetworkPolicy")}


# ---- Kubernetes NetworkPolicy --------------------------------------------------------------

@pytest.mark.parametrize("spec, enforces", [
    ({"podSelector": {}}, {INGRESS}),
    ({"podSelector": {}, "ingress": [{}]}, {INGRESS}),
    ({"podSelector": {}, "egress": [{}]}, {INGRESS, EGRESS}),
    # Kubernetes adds Egress only when there is an egress rule (len(spec.egress) != 0)
    ({"podSelector": {}, "egress": []}, {INGRESS}),
    ({"podSelector": {}, "policyTypes": []}, {INGRESS}),
    ({"podSelector": {}, "policyTypes": ["Egress"]}, {EGRESS}),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, {INGRESS, EGRESS}),
    ({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}, {EGRESS}),
])
def test_network_policy_policy_types(spec, enforces):
    assert parse(np(spec)).enforces == enforces


def test_network_policy_ignores_rules_of_directions_it_does_not_enforce():
    policy = parse(np({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}], "egress": [{}]}))
    assert policy.rules == (Rule(EGRESS, False, index=0),)


def test_network_policy_subject_and_header():
    policy = parse(np({"podSelector": {"matchLabels": {"app": "web"},
                                       "matchExpressions": [{"key": "tier", "operator": "In",
                                                             "values": ["a", "b"]}]}}))
    assert (policy.kind, policy.name, policy.namespace, policy.key) == \
        ("NetworkPolicy", "p", NS, "NetworkPolicy/shop/p")
    assert policy.subject == Selector((("k8s:app", "web"),), (Requirement("k8s:tier", "In", ("a", "b")),))


@pytest.mark.parametrize("peer, expected", [
    ({"podSelector": {"matchLabels": {"app": "db"}}}, Peer(pods=S({"app": "db"}), namespace=NS)),
    ({"podSelector": {}}, Peer(pods=ALL, namespace=NS)),
    ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, Peer(namespaces=S({"team": "a"}))),
    ({"namespaceSelector": {}}, Peer(namespaces=ALL)),
    ({"podSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"team": "a"}}},
     Peer(pods=S({"app": "db"}), namespaces=S({"team": "a"}))),
    ({"ipBlock": {"cidr": "10.0.0.0/8"}}, Peer(cidr="10.0.0.0/8")),
    ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12", "10.1.2.3/32"]}},
     Peer(cidr="10.0.0.0/8", except_=("10.96.0.0/12", "10.1.2.3/32"))),
])
@pytest.mark.parametrize("direction, key, peers_key", [(INGRESS, "ingress", "from"), (EGRESS, "egress", "to")])
def test_network_policy_peer_forms(peer, expected, direction, key, peers_key):
    policy = parse(np({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], key: [{peers_key: [peer]}]}))
    assert policy.rules == (Rule(direction, False, peers=(expected,), index=0),)


@pytest.mark.parametrize("rule", [{}, {"from": []}, {"from": None}, {"ports": []}])
def test_network_policy_missing_or_empty_from_and_ports_mean_everything(rule):
    policy = parse(np({"podSelector": {}, "ingress": [rule]}))
    assert policy.rules == (Rule(INGRESS, False, peers=(), ports=(), index=0),)


def test_network_policy_namespace_defaults_to_default():
    doc = np({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    del doc["metadata"]["namespace"]
    policy = parse(doc)
    assert policy.namespace == "default"
    assert policy.rules[0].peers == (Peer(pods=ALL, namespace="default"),)
    assert policy.document["metadata"] == {"name": "p", "namespace": "default"}


@pytest.mark.parametrize("port, expected", [
    ({}, PortRule("TCP", 0)),
    ({"port": 80}, PortRule("TCP", 80)),
    ({"protocol": "UDP", "port": 53}, PortRule("UDP", 53)),
    ({"protocol": "SCTP"}, PortRule("SCTP", 0)),
    ({"port": 8000, "endPort": 9000}, PortRule("TCP", 8000, 9000)),
    ({"port": 80, "endPort": 80}, PortRule("TCP", 80, 80)),
    ({"port": 65535}, PortRule("TCP", 65535)),
    ({"port": "http"}, PortRule("TCP", NAMED_PORT)),
    ({"protocol": "UDP", "port": "dns-udp"}, PortRule("UDP", NAMED_PORT)),
])
def test_network_policy_ports(port, expected):
    policy = parse(np({"podSelector": {}, "ingress": [{"ports": [port]}]}))
    assert policy.rules[0].ports == (expected,)


def test_network_policy_rule_indexes_and_several_peers_and_ports():
    policy = parse(np({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "1.2.3.0/24"}}],
                                    "ports": [{"port": 80}, {"protocol": "UDP", "port": 53}]},
                                   {}],
                       "egress": [{}]}))
    assert policy.rules == (
        Rule(INGRESS, False, (Peer(pods=ALL, namespace=NS), Peer(cidr="1.2.3.0/24")),
             (PortRule("TCP", 80), PortRule("UDP", 53)), 0),
        Rule(INGRESS, False, index=1),
        Rule(EGRESS, False, index=0),
    )


def test_network_policy_canonical_document_drops_status_and_keeps_metadata():
    doc = np({"podSelector": {}}, labels={"team": "a"}, annotations={"note": "x"})
    doc["status"] = {}
    assert parse(doc).document == {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": NS, "labels": {"team": "a"}, "annotations": {"note": "x"}},
        "spec": {"podSelector": {}}}


# ---- audit annotation ----------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda **m: np({"podSelector": {}}, **m),
                                  lambda **m: cnp(web(ingress=[{}]), **m),
                                  lambda **m: ccnp(web(ingress=[{}]), **m)])
@pytest.mark.parametrize("annotations, audit", [
    (None, False), ({}, False), ({"other": "true"}, False),
    ({"policy.capillary.io/audit": "false"}, False), ({"policy.capillary.io/audit": "true"}, True),
])
def test_audit_annotation(make, annotations, audit):
    doc = make() if annotations is None else make(annotations=annotations)
    assert parse(doc).audit is audit


# ---- Cilium: peers -------------------------------------------------------------------------

NS_KEY_FORMS = ["k8s:io.kubernetes.pod.namespace", "io.kubernetes.pod.namespace", "any:io.kubernetes.pod.namespace"]


@pytest.mark.parametrize("sel, namespace", [
    ({"matchLabels": {"app": "db"}}, NS),
    ({}, NS),                                               # every pod of the policy's namespace
    ({"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "a"}}, NS),   # still scoped
    *[({"matchLabels": {key: "other", "app": "db"}}, None) for key in NS_KEY_FORMS],
    ({"matchExpressions": [{"key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["a", "b"]}]}, None),
    ({"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}, None),
])
@pytest.mark.parametrize("key, direction", [("fromEndpoints", INGRESS), ("toEndpoints", EGRESS)])
def test_cnp_endpoint_selectors_are_namespace_scoped(sel, namespace, key, direction):
    rule = {key: [sel]}
    policy = parse(cnp(web(ingress=[rule]) if direction == INGRESS else web(egress=[rule])))
    (peer,) = policy.rules[0].peers
    assert peer == Peer(pods=Selector.of(sel.get("matchLabels"),
                                         [Requirement(r["key"], r["operator"], tuple(r.get("values", ())))
                                          for r in sel.get("matchExpressions", [])]),
                        namespace=namespace)


@pytest.mark.parametrize("sel", [{"matchLabels": {"app": "db"}}, {}, {"matchLabels": {NS_KEY_FORMS[0]: "x"}}])
def test_ccnp_endpoint_selectors_see_every_namespace(sel):
    policy = parse(ccnp(web(ingress=[{"fromEndpoints": [sel]}])))
    assert policy.namespace == "" and policy.key == "CiliumClusterwideNetworkPolicy/p"
    assert policy.rules[0].peers[0].namespace is None
    assert "namespace" not in policy.document["metadata"]


@pytest.mark.parametrize("key", ["k8s:app", "any:app", "app"])
def test_cilium_selector_key_sources(key):
    policy = parse(cnp({"endpointSelector": {"matchLabels": {key: "web"}}, "ingress": [{}]}))
    assert policy.subject == S({"app": "web"}) == Selector((("k8s:app", "web"),))


@pytest.mark.parametrize("key, direction", [("fromEntities", INGRESS), ("toEntities", EGRESS)])
def test_cilium_entities(key, direction):
    rule = {key: ["host", "world", "all", "cluster"]}
    policy = parse(cnp(web(ingress=[rule]) if direction == INGRESS else web(egress=[rule])))
    assert policy.rules == (Rule(direction, False, tuple(Peer(entity=e) for e in ("host", "world", "all", "cluster")),
                                 index=0),)


@pytest.mark.parametrize("rule, peers", [
    ({"fromCIDR": ["10.0.0.0/8", "192.168.1.1/32"]}, (Peer(cidr="10.0.0.0/8"), Peer(cidr="192.168.1.1/32"))),
    ({"fromCIDR": ["192.168.1.1"]}, (Peer(cidr="192.168.1.1/32"),)),    # Cilium: a bare address is a /32
    ({"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
     (Peer(cidr="10.0.0.0/8", except_=("10.96.0.0/12",)),)),
    ({"fromCIDRSet": [{"cidr": "10.0.0.0/8"}, {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}]},
     (Peer(cidr="10.0.0.0/8"), Peer(cidr="0.0.0.0/0", except_=("10.0.0.0/8",)))),
    ({"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}]},     # Cilium allows except == cidr
     (Peer(cidr="10.0.0.0/8", except_=("10.0.0.0/8",)),)),
])
def test_cilium_cidrs(rule, peers):
    policy = parse(cnp(web(ingress=[rule])))
    assert policy.rules[0].peers == peers
    egress = {k.replace("from", "to"): v for k, v in rule.items()}
    assert parse(cnp(web(egress=[egress]))).rules[0].peers == peers


def test_cilium_rule_without_peer_fields_is_l4_only_and_without_ports_is_l3_only():
    policy = parse(cnp(web(ingress=[{"toPorts": [{"ports": [{"port": "80"}]}]},
                                    {"fromEndpoints": [{}], "toPorts": []},
                                    {"fromEndpoints": [], "icmps": [{"fields": [{"type": 8}]}]}])))
    assert policy.rules == (
        Rule(INGRESS, False, peers=(), ports=(PortRule("ANY", 80),), index=0),
        Rule(INGRESS, False, peers=(Peer(pods=ALL, namespace=NS),), ports=(), index=1),
        Rule(INGRESS, False, peers=(), ports=(PortRule("ICMP", 8),), index=2),
    )


# ---- Cilium: ports and ICMP ----------------------------------------------------------------

@pytest.mark.parametrize("port, expected", [
    ({"port": "80"}, PortRule("ANY", 80)),                 # Cilium's default protocol is ANY
    ({"port": "80", "protocol": "TCP"}, PortRule("TCP", 80)),
    ({"port": "53", "protocol": "UDP"}, PortRule("UDP", 53)),
    ({"port": "9", "protocol": "SCTP"}, PortRule("SCTP", 9)),
    ({"port": "443", "protocol": "ANY"}, PortRule("ANY", 443)),
    ({"port": "0"}, PortRule("ANY", 0)),                   # Cilium: port 0 is every port
    ({"port": "0", "protocol": "UDP"}, PortRule("UDP", 0)),
    ({"port": "8000", "endPort": 9000, "protocol": "TCP"}, PortRule("TCP", 8000, 9000)),
    ({"port": "http"}, PortRule("ANY", NAMED_PORT)),
    ({"port": "HTTP"}, PortRule("ANY", NAMED_PORT)),       # Cilium lower-cases port names
])
def test_cilium_ports(port, expected):
    assert parse(cnp(web(ingress=[{"toPorts": [{"ports": [port]}]}]))).rules[0].ports == (expected,)


def test_cilium_numeric_port_is_stored_as_a_string():
    policy = parse_policy(cnp(web(ingress=[{"toPorts": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}])))
    assert policy.warnings == []
    assert policy.policy.rules[0].ports == (PortRule("TCP", 80),)
    assert policy.policy.document["spec"]["ingress"][0]["toPorts"] == [{"ports": [{"port": "80", "protocol": "TCP"}]}]
    assert parse_policy(policy.policy.document).policy == policy.policy


def test_cilium_several_port_entries_and_ports():
    policy = parse(cnp(web(egress=[{"toEndpoints": [{}], "toPorts": [
        {"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]},
        {"ports": [{"port": "443", "protocol": "TCP"}]}]}])))
    assert policy.rules[0].ports == (PortRule("UDP", 53), PortRule("TCP", 53), PortRule("TCP", 443))


@pytest.mark.parametrize("icmps, ports", [
    ([{"fields": [{"type": 8}]}], (PortRule("ICMP", 8),)),
    ([{"fields": [{"type": 8, "family": "IPv4"}, {"type": 0}]}], (PortRule("ICMP", 8), PortRule("ICMP", 0))),
    ([{"fields": [{"type": 3}]}, {"fields": [{"type": 255}]}], (PortRule("ICMP", 3), PortRule("ICMP", 255))),
])
def test_cilium_icmps(icmps, ports):
    policy = parse(cnp(web(egress=[{"toEntities": ["world"], "icmps": icmps}])))
    assert policy.rules == (Rule(EGRESS, False, (Peer(entity="world"),), ports, 0),)


# ---- Cilium: deny lists, enforcement, specs ------------------------------------------------

def test_cilium_deny_lists_and_indexes_within_each_list():
    spec = web(ingress=[{"fromEntities": ["world"]}, {"fromEntities": ["host"]}],
               egress=[{"toEntities": ["world"]}],
               ingressDeny=[{"fromCIDR": ["10.0.0.0/8"]}],
               egressDeny=[{"toCIDR": ["10.0.0.0/8"]}, {"toPorts": [{"ports": [{"port": "25"}]}]}])
    policy = parse(cnp(spec))
    assert policy.rules == (
        Rule(INGRESS, False, (Peer(entity="world"),), index=0),
        Rule(INGRESS, False, (Peer(entity="host"),), index=1),
        Rule(INGRESS, True, (Peer(cidr="10.0.0.0/8"),), index=0),
        Rule(EGRESS, False, (Peer(entity="world"),), index=0),
        Rule(EGRESS, True, (Peer(cidr="10.0.0.0/8"),), index=0),
        Rule(EGRESS, True, (), (PortRule("ANY", 25),), index=1),
    )
    assert policy.enforces == {INGRESS, EGRESS}


R = {"fromEntities": ["world"]}
E = {"toEntities": ["world"]}


@pytest.mark.parametrize("spec, enforces", [
    (web(ingress=[R]), {INGRESS}),
    (web(egress=[E]), {EGRESS}),
    (web(ingressDeny=[R]), {INGRESS}),
    (web(egressDeny=[E]), {EGRESS}),
    (web(ingress=[R], egress=[E]), {INGRESS, EGRESS}),
    # Cilium: len(egress) > 0 || len(egressDeny) > 0 — an empty list is no rule
    (web(ingress=[R], egress=[]), {INGRESS}),
    (web(ingress=[R], egressDeny=[]), {INGRESS}),
    (web(ingress=[{}]), {INGRESS}),
    (web(ingress=[R], enableDefaultDeny={"ingress": False}), set()),
    (web(ingress=[R], egress=[E], enableDefaultDeny={"egress": False}), {INGRESS}),
    (web(ingress=[R], enableDefaultDeny={"egress": True}), {INGRESS, EGRESS}),
    (web(ingress=[R], enableDefaultDeny={"ingress": True, "egress": False}), {INGRESS}),
    (web(ingress=[R], enableDefaultDeny={}), {INGRESS}),
])
def test_cilium_enforces(spec, enforces):
    assert parse(cnp(spec)).enforces == enforces


def test_cilium_rules_stay_when_default_deny_is_off():
    policy = parse(cnp(web(ingress=[R], enableDefaultDeny={"ingress": False})))
    assert policy.enforces == set() and policy.rules == (Rule(INGRESS, False, (Peer(entity="world"),), index=0),)


def test_cilium_empty_rule_is_deny_all():
    # `ingress: [{}]` selects no peer in Cilium: it only turns on default deny
    policy = parse(cnp(web(ingress=[{}], egress=[{}, E])))
    assert policy.enforces == {INGRESS, EGRESS}
    assert policy.rules == (Rule(EGRESS, False, (Peer(entity="world"),), index=1),)


def test_cilium_rule_object_extras_are_accepted():
    policy = parse(cnp(web(ingress=[R], description="allow world",
                           labels=[{"key": "team", "value": "a", "source": "k8s"}, {"key": "x"}])))
    assert policy.rules[0].peers == (Peer(entity="world"),)


def test_specs_with_the_same_endpoint_selector_are_concatenated():
    doc = cnp({})
    del doc["spec"]
    doc["specs"] = [web(ingress=[R], egress=[E]),
                    {"endpointSelector": {"matchLabels": {"k8s:app": "web"}}, "ingress": [{"fromEntities": ["host"]}],
                     "enableDefaultDeny": {"egress": False}}]
    policy = parse(doc)
    assert policy.subject == S({"app": "web"})
    assert policy.enforces == {INGRESS, EGRESS}          # union over the rule objects
    assert policy.rules == (
        Rule(INGRESS, False, (Peer(entity="world"),), index=0),
        Rule(EGRESS, False, (Peer(entity="world"),), index=0),
        Rule(INGRESS, False, (Peer(entity="host"),), index=1),   # indexes continue across specs
    )
    assert "specs" in policy.document and "spec" not in policy.document


def test_spec_and_specs_together():
    doc = cnp(web(ingress=[R]))
    doc["specs"] = [web(egress=[E])]
    policy = parse(doc)
    assert [r.direction for r in policy.rules] == [INGRESS, EGRESS]


# ---- the seed article's shorthand ----------------------------------------------------------

SEED = """\
apiVersion: cilium.io/v1
kind: CiliumNetworkPolicy
metadata:
  name: allow-https
spec:
  endpointSelector:
    matchLabels:
      app: https-server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: https-client
    toPorts:
    - 443
"""

SEED_CANONICAL = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-https
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: https-server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: https-client
    toPorts:
    - ports:
      - port: '443'
        protocol: TCP
"""


def test_seed_example():
    parsed = parse_policy(yaml.safe_load(SEED))
    assert parsed.policy == Policy(
        kind="CiliumNetworkPolicy", name="allow-https", namespace="default",
        subject=S({"app": "https-server"}), enforces=frozenset({INGRESS}),
        rules=(Rule(INGRESS, False, peers=(Peer(pods=S({"app": "https-client"}), namespace="default"),),
                    ports=(PortRule("TCP", 443),), index=0),))
    assert parsed.policy.document == yaml.safe_load(SEED_CANONICAL)
    assert parsed.warnings == [
        "CiliumNetworkPolicy default/allow-https: accepted shorthand: apiVersion cilium.io/v1 "
        "(now cilium.io/v2); bare port numbers in toPorts (each means ports: "
        '[{port: "N", protocol: TCP}]). Stored in canonical form:\n' + SEED_CANONICAL]
    again = parse_policy(parsed.policy.document)
    assert again.policy == parsed.policy and again.warnings == []
    assert again.policy.document == parsed.policy.document


@pytest.mark.parametrize("entry", [8080, "8080"])
def test_bare_toports_in_v2_and_in_other_lists(entry):
    parsed = parse_policy(cnp(web(egress=[{"toEntities": ["world"], "toPorts": [entry, {"ports": [{"port": "53"}]}]}],
                                  ingressDeny=[{"toPorts": [entry]}])))
    assert parsed.policy.rules == (
        Rule(INGRESS, True, (), (PortRule("TCP", 8080),), 0),
        Rule(EGRESS, False, (Peer(entity="world"),), (PortRule("TCP", 8080), PortRule("ANY", 53)), 0),
    )
    (warning,) = parsed.warnings
    assert "bare port numbers in toPorts" in warning and "cilium.io/v1" not in warning
    assert parsed.policy.document["spec"]["egress"][0]["toPorts"][0] == {"ports": [{"port": "8080", "protocol": "TCP"}]}


@pytest.mark.parametrize("kind", ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"])
def test_cilium_v1_alone_is_normalized_with_a_warning(kind):
    doc = (cnp if kind == "CiliumNetworkPolicy" else ccnp)(web(ingress=[R]))
    doc["apiVersion"] = "cilium.io/v1"
    parsed = parse_policy(doc)
    (warning,) = parsed.warnings
    assert "apiVersion cilium.io/v1 (now cilium.io/v2)" in warning and "bare port" not in warning
    assert parsed.policy.document["apiVersion"] == "cilium.io/v2"
    assert yaml.safe_load(warning.split("Stored in canonical form:\n", 1)[1]) == parsed.policy.document
    assert parse_policy(parsed.policy.document) == type(parsed)(parsed.policy, [])


# ---- model: selectors and peers on identity labels -----------------------------------------

IDENTITY = {"k8s:app": "web",
            "k8s:io.kubernetes.pod.namespace": "x",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "x",
            "k8s:io.cilium.k8s.namespace.labels.team": "a"}


@pytest.mark.parametrize("req, matches", [
    (Requirement("k8s:app", "In", ("web", "db")), True),
    (Requirement("k8s:app", "In", ("db",)), False),
    (Requirement("k8s:missing", "In", ("web",)), False),
    (Requirement("k8s:app", "NotIn", ("db",)), True),
    (Requirement("k8s:app", "NotIn", ("web",)), False),
    (Requirement("k8s:missing", "NotIn", ("web",)), True),
    (Requirement("k8s:app", "Exists"), True),
    (Requirement("k8s:missing", "Exists"), False),
    (Requirement("k8s:app", "DoesNotExist"), False),
    (Requirement("k8s:missing", "DoesNotExist"), True),
])
def test_requirement_matches(req, matches):
    assert req.matches(IDENTITY) is matches


@pytest.mark.parametrize("sel, matches", [
    (Selector(), True),
    (S({"app": "web"}), True),
    (S({"k8s:app": "web"}), True),
    (S({"any:app": "web"}), True),
    (S({"app": "db"}), False),
    (S({"app": "web", "tier": "front"}), False),
    (S({"io.kubernetes.pod.namespace": "x"}), True),
    (S({"k8s:io.cilium.k8s.namespace.labels.team": "a"}), True),
    (S(None, [Requirement("app", "In", ("web",)), Requirement("tier", "DoesNotExist")]), True),
    (S({"app": "web"}, [Requirement("any:app", "NotIn", ("web",))]), False),
])
def test_selector_matches(sel, matches):
    assert sel.matches(IDENTITY) is matches


@pytest.mark.parametrize("peer, matches", [
    (Peer(pods=S({"app": "web"}), namespace="x"), True),
    (Peer(pods=S({"app": "web"}), namespace="y"), False),
    (Peer(pods=Selector(), namespace="x"), True),
    (Peer(pods=S({"app": "db"}), namespace="x"), False),
    (Peer(namespaces=S({"team": "a"})), True),
    (Peer(namespaces=S({"team": "b"})), False),
    (Peer(namespaces=S({"kubernetes.io/metadata.name": "x"})), True),
    (Peer(namespaces=Selector()), True),
    (Peer(pods=S({"app": "web"}), namespaces=S({"team": "a"})), True),
    (Peer(pods=S({"app": "db"}), namespaces=S({"team": "a"})), False),
    (Peer(pods=S({"io.kubernetes.pod.namespace": "x"})), True),
    (Peer(), True),
    (Peer(entity="world"), False),
    (Peer(entity="all"), False),
    (Peer(cidr="10.0.0.0/8"), False),
])
def test_peer_matches_pod(peer, matches):
    assert peer.matches_pod(IDENTITY) is matches


def test_peer_without_namespace_label_never_matches():
    labels = {k: v for k, v in IDENTITY.items() if k != "k8s:io.kubernetes.pod.namespace"}
    assert not Peer(pods=Selector()).matches_pod(labels)


@pytest.mark.parametrize("doc, matches", [
    (np({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}), True),
    (np({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}), False),
    (cnp(web(ingress=[{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "x"}}]}])), True),
    (cnp(web(ingress=[{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}])), False),   # scoped to shop
    (ccnp(web(ingress=[{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}])), True),
])
def test_parsed_peers_match_identities(doc, matches):
    (peer,) = parse(doc).rules[0].peers
    assert peer.matches_pod(IDENTITY) is matches


def test_policy_selects_within_its_namespace():
    assert parse(cnp(web(ingress=[R]))).selects(IDENTITY) is False           # namespace shop
    assert parse(ccnp(web(ingress=[R]))).selects(IDENTITY) is True
    doc = np({"podSelector": {"matchLabels": {"app": "web"}}})
    doc["metadata"]["namespace"] = "x"
    assert parse(doc).selects(IDENTITY) is True
