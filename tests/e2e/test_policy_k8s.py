"""Kubernetes NetworkPolicy semantics, enforced in the kernel: one test per rule shape,
each comparing the full reachability matrix of the x/y/z model with the expected one."""
import pytest
import yaml

from tests.e2e.policy_model import everything


def netpol(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_no_policy_allows_everything(model):
    model.check(everything)


def test_default_deny_ingress_in_a_namespace(model, policies):
    policies(netpol("deny-all", "x", {"podSelector": {}}))
    model.check(lambda s, d, p, port: not d.startswith("x/"))


def test_allow_from_pods_in_the_same_namespace(model, policies):
    policies(netpol("allow-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or s == "x/b")


def test_allow_from_a_namespace(model, policies):
    policies(netpol("from-y", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                                        "kubernetes.io/metadata.name": "y"}}}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or s.startswith("y/"))


def test_pod_and_namespace_selector_together(model, policies):
    policies(netpol("c-in-yz", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                     "ingress": [{"from": [{
                                         "namespaceSelector": {"matchExpressions": [
                                             {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
                                         "podSelector": {"matchLabels": {"pod": "c"}}}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or s in ("y/c", "z/c"))


def test_ports_and_protocols(model, policies):
    policies(netpol("tcp80", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                   "ingress": [{"ports": [{"port": 80}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or (p == "tcp" and port == 80))


def test_end_port_range_and_udp(model, policies):
    policies(netpol("udp-range", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                       "ingress": [{"ports": [{"protocol": "UDP", "port": 80, "endPort": 81}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or p == "udp")


def test_rules_add_up(model, policies):
    policies(netpol("one", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
             netpol("two", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                                              "ports": [{"port": 81, "protocol": "TCP"}]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or s == "x/b" or (s.startswith("z/") and p == "tcp" and port == 81))


def test_match_expressions(model, policies):
    policies(netpol("exprs", "y", {"podSelector": {"matchExpressions": [
        {"key": "pod", "operator": "NotIn", "values": ["a"]}]},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "Exists"}]}, "namespaceSelector": {"matchExpressions": [
                {"key": "missing", "operator": "DoesNotExist"}]}}]}]}))
    # y/b and y/c are selected; every pod has a `pod` label and no namespace has `missing`.
    model.check(everything)
    policies(netpol("exprs2", "y", {"podSelector": {"matchExpressions": [
        {"key": "pod", "operator": "In", "values": ["b"]}]},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "DoesNotExist"}]}}]}]}))
    # exprs2 adds nothing for y/b, but exprs still lets everyone in: allow rules add up.
    model.check(everything)


def test_egress_default_deny_keeps_replies(model, policies):
    policies(netpol("no-egress", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}))
    model.check(lambda s, d, p, port: s != "x/a")


def test_policy_types_default_from_rules(model, policies):
    # No policyTypes: Ingress always, plus Egress because egress rules are present. So x/b
    # takes nothing in, and sends only to y on UDP 81.
    policies(netpol("egress-to-y-udp81", "x", {"podSelector": {"matchLabels": {"pod": "b"}},
                                               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                                           "ports": [{"protocol": "UDP", "port": 81}]}]}))
    model.check(lambda s, d, p, port: d != "x/b" and
                (s != "x/b" or (d.startswith("y/") and p == "udp" and port == 81)))


def test_egress_only_policy_type_leaves_ingress_open(model, policies):
    policies(netpol("egress-only", "x", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                                         "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}))
    model.check(lambda s, d, p, port: s != "x/b" or d == "x/c")


def test_ingress_and_egress_in_one_policy(model, policies):
    policies(netpol("both", "z", {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress", "Egress"],
                                  "ingress": [{"from": [{"podSelector": {}}]}]}))
    # z/c: ingress only from its own namespace; egress nothing (replies still pass).
    model.check(lambda s, d, p, port: (s != "z/c") and (d != "z/c" or s.startswith("z/")))
