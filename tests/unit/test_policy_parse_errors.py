"""Bad policy documents: each error names the document and the exact field path."""
from __future__ import annotations

import copy

import pytest

from services.policyd.fields import NAMED_PORT, is_port_name, port_value
from services.policyd.parse import PolicyError, parse_policy

NPW = "NetworkPolicy shop/p"
CNPW = "CiliumNetworkPolicy shop/p"
CCNPW = "CiliumClusterwideNetworkPolicy p"


def np(spec=None, **top) -> dict:
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "p", "namespace": "shop"}, "spec": {"podSelector": {}, **(spec or {})}}
    doc.update(top)
    return doc


def np_ingress(rule: dict) -> dict:
    return np({"ingress": [rule]})


def np_peer(peer: dict) -> dict:
    return np_ingress({"from": [peer]})


def np_port(port: dict) -> dict:
    return np_ingress({"ports": [port]})


def cnp(spec=None, kind="CiliumNetworkPolicy", **top) -> dict:
    doc = {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": {"name": "p", "namespace": "shop"},
           "spec": {"endpointSelector": {}, **(spec if spec is not None else {"ingress": [{}]})}}
    if kind == "CiliumClusterwideNetworkPolicy":
        del doc["metadata"]["namespace"]
    doc.update(top)
    return doc


def cnp_ingress(rule: dict) -> dict:
    return cnp({"ingress": [rule]})


def cnp_port(port: dict) -> dict:
    return cnp_ingress({"toPorts": [{"ports": [port]}]})


def with_meta(doc: dict, **meta) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"] = meta
    return doc


SEL = "spec.podSelector"
NP_PORT = "spec.ingress[0].ports[0]"
NP_PEER = "spec.ingress[0].from[0]"
CNP_PORT = "spec.ingress[0].toPorts[0].ports[0]"

CASES = [
    # ---- header and metadata
    ("no-kind", {"apiVersion": "v1"}, "policy ?", "kind", "required field is missing"),
    ("pod-kind", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, "Pod p", "kind",
     '"Pod" is not a policy kind (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)'),
    ("old-np-api", np(apiVersion="extensions/v1beta1"), NPW, "apiVersion",
     '"extensions/v1beta1" is not supported for NetworkPolicy (use networking.k8s.io/v1)'),
    ("cilium-v3", cnp(apiVersion="cilium.io/v3"), CNPW, "apiVersion",
     '"cilium.io/v3" is not supported for CiliumNetworkPolicy (use cilium.io/v2)'),
    ("no-api", np(apiVersion=None), NPW, "apiVersion", "required field is missing"),
    ("top-unknown", np(extra=1), NPW, "extra", "unknown field"),
    ("no-metadata", np(metadata=None), "NetworkPolicy default/?", "metadata", "required field is missing"),
    ("no-name", with_meta(np(), namespace="shop"), "NetworkPolicy shop/?", "metadata.name", "required field is missing"),
    ("name-not-string", with_meta(np(), name=5, namespace="shop"), "NetworkPolicy shop/?", "metadata.name",
     "expected a string, got a number"),
    ("bad-name", with_meta(np(), name="Bad_Name", namespace="shop"), "NetworkPolicy shop/Bad_Name", "metadata.name",
     "\"Bad_Name\" is not a valid name (a DNS subdomain: lowercase letters, digits, '-' and '.')"),
    ("long-name", with_meta(np(), name="a" * 254, namespace="shop"), f"NetworkPolicy shop/{'a' * 254}",
     "metadata.name", f'"{"a" * 254}" is not a valid name (a DNS subdomain: lowercase letters, digits, \'-\' and \'.\')'),
    ("bad-namespace", with_meta(np(), name="p", namespace="Shop"), "NetworkPolicy Shop/p", "metadata.namespace",
     '"Shop" is not a valid namespace name'),
    ("meta-unknown", with_meta(np(), name="p", namespace="shop", uid="1"), NPW, "metadata.uid", "unknown field"),
    ("meta-label-key", with_meta(np(), name="p", namespace="shop", labels={"a b": "x"}), NPW, "metadata.labels",
     '"a b" is not a valid label key'),
    ("meta-label-value", with_meta(np(), name="p", namespace="shop", labels={"a": "x y"}), NPW, "metadata.labels.a",
     '"x y" is not a valid label value'),
    ("annotation-value", with_meta(np(), name="p", namespace="shop", annotations={"a": 1}), NPW,
     "metadata.annotations.a", "expected a string, got a number"),
    ("audit-value", with_meta(np(), name="p", namespace="shop", annotations={"policy.capillary.io/audit": "yes"}),
     NPW, "metadata.annotations.policy.capillary.io/audit", '"yes" must be "true" or "false"'),
    ("ccnp-namespace", with_meta(cnp(kind="CiliumClusterwideNetworkPolicy"), name="p", namespace="shop"), CCNPW,
     "metadata.namespace", "CiliumClusterwideNetworkPolicy is cluster-wide and has no namespace"),

    # ---- NetworkPolicy spec and selectors
    ("np-no-spec", np(spec=None) | {"spec": None}, NPW, "spec", "required field is missing"),
    ("np-spec-unknown", np({"ingres": []}), NPW, "spec.ingres", "unknown field"),
    ("np-no-podselector", np() | {"spec": {"ingress": []}}, NPW, "spec.podSelector", "required field is missing"),
    ("np-policy-type", np({"policyTypes": ["Ingress", "Both"]}), NPW, "spec.policyTypes[1]",
     '"Both" is not a policy type (use Ingress or Egress)'),
    ("np-ingress-not-list", np({"ingress": {"from": []}}), NPW, "spec.ingress", "expected a list, got a mapping"),
    ("np-rule-unknown", np_ingress({"to": []}), NPW, "spec.ingress[0].to", "unknown field"),
    ("sel-unknown", np({"podSelector": {"matchLabel": {}}}), NPW, f"{SEL}.matchLabel", "unknown field"),
    ("sel-operator", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}}),
     NPW, f"{SEL}.matchExpressions[0].operator", '"Equals" is not a valid operator (use In, NotIn, Exists or DoesNotExist)'),
    ("sel-no-operator", np({"podSelector": {"matchExpressions": [{"key": "a"}]}}), NPW,
     f"{SEL}.matchExpressions[0].operator", "required field is missing"),
    ("sel-no-key", np({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}), NPW,
     f"{SEL}.matchExpressions[0].key", "required field is missing"),
    ("sel-in-empty", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}),
     NPW, f"{SEL}.matchExpressions[0].values", "must not be empty for operator In"),
    ("sel-notin-missing", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn"}]}}),
     NPW, f"{SEL}.matchExpressions[0].values", "must not be empty for operator NotIn"),
    ("sel-exists-values", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
     NPW, f"{SEL}.matchExpressions[0].values", "must be empty for operator Exists"),
    ("sel-dne-values", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "DoesNotExist",
                                                                  "values": ["x"]}]}}),
     NPW, f"{SEL}.matchExpressions[0].values", "must be empty for operator DoesNotExist"),
    ("sel-expr-key", np({"podSelector": {"matchExpressions": [{"key": "-a", "operator": "Exists"}]}}),
     NPW, f"{SEL}.matchExpressions[0].key", '"-a" is not a valid label key'),
    ("sel-expr-value", np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "n o"]}]}}),
     NPW, f"{SEL}.matchExpressions[0].values[1]", '"n o" is not a valid label value'),
    ("sel-label-key", np({"podSelector": {"matchLabels": {"a b": "x"}}}), NPW, f"{SEL}.matchLabels",
     '"a b" is not a valid label key'),
    ("sel-label-prefix", np({"podSelector": {"matchLabels": {"Bad_Prefix/app": "x"}}}), NPW, f"{SEL}.matchLabels",
     '"Bad_Prefix/app" is not a valid label key'),
    ("sel-k8s-source-in-np", np({"podSelector": {"matchLabels": {"k8s:app": "x"}}}), NPW, f"{SEL}.matchLabels",
     '"k8s:app" is not a valid label key'),
    ("sel-label-value", np({"podSelector": {"matchLabels": {"app": "-x"}}}), NPW, f"{SEL}.matchLabels.app",
     '"-x" is not a valid label value'),
    ("sel-label-long", np({"podSelector": {"matchLabels": {"app": "x" * 64}}}), NPW, f"{SEL}.matchLabels.app",
     f'"{"x" * 64}" is not a valid label value'),
    ("sel-label-number", np({"podSelector": {"matchLabels": {"version": 1.1}}}), NPW, f"{SEL}.matchLabels.version",
     "value must be a string (quote it)"),
    ("sel-not-mapping", np({"podSelector": ["app"]}), NPW, SEL, "expected a mapping, got a list"),

    # ---- NetworkPolicy peers
    ("np-peer-empty", np_peer({}), NPW, NP_PEER, "must specify podSelector, namespaceSelector or ipBlock"),
    ("np-peer-unknown", np_peer({"podSelectors": {}}), NPW, f"{NP_PEER}.podSelectors", "unknown field"),
    ("np-ipblock-and-pods", np_peer({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}), NPW,
     f"{NP_PEER}.ipBlock", "cannot be combined with podSelector or namespaceSelector"),
    ("np-ipblock-and-ns", np_peer({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}), NPW,
     f"{NP_PEER}.ipBlock", "cannot be combined with podSelector or namespaceSelector"),
    ("np-ipblock-no-cidr", np_peer({"ipBlock": {"except": []}}), NPW, f"{NP_PEER}.ipBlock.cidr", "required field is missing"),
    ("np-host-bits", np_peer({"ipBlock": {"cidr": "10.0.0.1/8"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)'),
    ("np-no-prefix", np_peer({"ipBlock": {"cidr": "10.0.0.1"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"10.0.0.1" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("np-netmask", np_peer({"ipBlock": {"cidr": "10.0.0.0/255.0.0.0"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"10.0.0.0/255.0.0.0" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("np-garbage-cidr", np_peer({"ipBlock": {"cidr": "10.0.0.300/8"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"10.0.0.300/8" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("np-prefix-33", np_peer({"ipBlock": {"cidr": "10.0.0.0/33"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"10.0.0.0/33" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("np-ipv6", np_peer({"ipBlock": {"cidr": "fd00::/8"}}), NPW, f"{NP_PEER}.ipBlock.cidr",
     '"fd00::/8": IPv6 is not supported'),
    ("np-except-outside", np_peer({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.1.0.0/24"]}}),
     NPW, f"{NP_PEER}.ipBlock.except[1]", '"10.1.0.0/24" is not strictly inside cidr "10.0.0.0/16"'),
    ("np-except-bigger", np_peer({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}}),
     NPW, f"{NP_PEER}.ipBlock.except[0]", '"10.0.0.0/8" is not strictly inside cidr "10.0.0.0/16"'),
    ("np-except-equal", np_peer({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}),
     NPW, f"{NP_PEER}.ipBlock.except[0]", '"10.0.0.0/16" is not strictly inside cidr "10.0.0.0/16"'),
    ("np-except-host-bits", np_peer({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.1/24"]}}),
     NPW, f"{NP_PEER}.ipBlock.except[0]", '"10.0.0.1/24" has host bits set (the network is 10.0.0.0/24)'),
    ("np-ns-selector-bad", np_peer({"namespaceSelector": {"matchLabels": {"team": "a b"}}}), NPW,
     f"{NP_PEER}.namespaceSelector.matchLabels.team", '"a b" is not a valid label value'),

    # ---- NetworkPolicy ports
    ("np-port-0", np_port({"port": 0}), NPW, f"{NP_PORT}.port", "0 is not a port number (1-65535)"),
    ("np-port-high", np_port({"port": 65536}), NPW, f"{NP_PORT}.port", "65536 is not a port number (1-65535)"),
    ("np-port-negative", np_port({"port": -1}), NPW, f"{NP_PORT}.port", "-1 is not a port number (1-65535)"),
    ("np-port-bad-name", np_port({"port": "ab_c"}), NPW, f"{NP_PORT}.port", '"ab_c" is not a port number or name'),
    ("np-port-numeric-string", np_port({"port": "80"}), NPW, f"{NP_PORT}.port", '"80" is not a port number or name'),
    ("np-port-upper-name", np_port({"port": "HTTP"}), NPW, f"{NP_PORT}.port", '"HTTP" is not a port number or name'),
    ("np-port-bool", np_port({"port": True}), NPW, f"{NP_PORT}.port", "true is not a port number or name"),
    ("np-port-float", np_port({"port": 80.5}), NPW, f"{NP_PORT}.port", "80.5 is not a port number or name"),
    ("np-endport-less", np_port({"port": 90, "endPort": 80}), NPW, f"{NP_PORT}.endPort", "80 is less than port 90"),
    ("np-endport-named", np_port({"port": "http", "endPort": 90}), NPW, f"{NP_PORT}.endPort",
     "cannot be used with a named port"),
    ("np-endport-no-port", np_port({"endPort": 90}), NPW, f"{NP_PORT}.endPort", "needs a port number in port"),
    ("np-endport-high", np_port({"port": 90, "endPort": 70000}), NPW, f"{NP_PORT}.endPort",
     "70000 is not a port number (1-65535)"),
    ("np-endport-string", np_port({"port": 90, "endPort": "100"}), NPW, f"{NP_PORT}.endPort",
     '"100" is not a port number (1-65535)'),
    ("np-protocol-icmp", np_port({"protocol": "ICMP"}), NPW, f"{NP_PORT}.protocol",
     '"ICMP" is not a protocol (use TCP, UDP or SCTP)'),
    ("np-protocol-lower", np_port({"protocol": "tcp", "port": 80}), NPW, f"{NP_PORT}.protocol",
     '"tcp" is not a protocol (use TCP, UDP or SCTP)'),
    ("np-port-unknown", np_port({"ports": 80}), NPW, f"{NP_PORT}.ports", "unknown field"),
    ("np-egress-port", np({"egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 0}]}]}), NPW,
     "spec.egress[0].ports[0].port", "0 is not a port number (1-65535)"),

    # ---- Cilium rule objects
    ("cnp-no-spec", cnp() | {"spec": None}, CNPW, "spec", "required field is missing"),
    ("cnp-no-selector", cnp() | {"spec": {"ingress": [{}]}}, CNPW, "spec.endpointSelector", "required field is missing"),
    ("cnp-spec-unknown", cnp({"ingress": [{}], "egres": []}), CNPW, "spec.egres", "unknown field"),
    ("cnp-node-selector", cnp({"ingress": [{}], "nodeSelector": {}}), CNPW, "spec.nodeSelector",
     "is not supported by capillary"),
    ("cnp-no-rules", cnp({}), CNPW, "spec", "needs at least one ingress, ingressDeny, egress or egressDeny rule"),
    ("cnp-only-empty-lists", cnp({"ingress": [], "egressDeny": []}), CNPW, "spec",
     "needs at least one ingress, ingressDeny, egress or egressDeny rule"),
    ("cnp-default-deny-type", cnp({"ingress": [{}], "enableDefaultDeny": {"ingress": "yes"}}), CNPW,
     "spec.enableDefaultDeny.ingress", "expected true or false, got a string"),
    ("cnp-default-deny-unknown", cnp({"ingress": [{}], "enableDefaultDeny": {"both": True}}), CNPW,
     "spec.enableDefaultDeny.both", "unknown field"),
    ("cnp-labels-no-key", cnp({"ingress": [{}], "labels": [{"value": "x"}]}), CNPW, "spec.labels[0].key",
     "required field is missing"),
    ("cnp-description", cnp({"ingress": [{}], "description": ["x"]}), CNPW, "spec.description",
     "expected a string, got a list"),
    ("cnp-specs-different",
     cnp() | {"spec": None, "specs": [{"endpointSelector": {}, "ingress": [{}]},
                                      {"endpointSelector": {"matchLabels": {"app": "x"}}, "ingress": [{}]}]},
     CNPW, "specs[1].endpointSelector",
     "specs with different endpointSelectors are not supported (write one policy per endpointSelector)"),
    ("cnp-specs-not-list", cnp() | {"spec": None, "specs": {"endpointSelector": {}}}, CNPW, "specs",
     "expected a list, got a mapping"),
    ("cnp-specs-item-rules", cnp() | {"spec": None, "specs": [{"endpointSelector": {}, "ingress": [{}]},
                                                              {"endpointSelector": {}, "egress": [{"foo": 1}]}]},
     CNPW, "specs[1].egress[0].foo", "unknown field"),
    ("cnp-selector-source", cnp({"endpointSelector": {"matchLabels": {"reserved:host": ""}}, "ingress": [{}]}), CNPW,
     "spec.endpointSelector.matchLabels", '"reserved:host": label source "reserved" is not supported (use k8s: or any:)'),
    ("cnp-selector-key", cnp({"endpointSelector": {"matchLabels": {"k8s:a b": "x"}}, "ingress": [{}]}), CNPW,
     "spec.endpointSelector.matchLabels", '"k8s:a b" is not a valid label key'),
    ("cnp-selector-expr", cnp({"endpointSelector": {"matchExpressions": [{"key": "any:a", "operator": "in",
                                                                          "values": ["x"]}]}, "ingress": [{}]}), CNPW,
     "spec.endpointSelector.matchExpressions[0].operator",
     '"in" is not a valid operator (use In, NotIn, Exists or DoesNotExist)'),
    ("ccnp-where", cnp({"ingress": [{"fromEntities": ["nope"]}]}, kind="CiliumClusterwideNetworkPolicy"), CCNPW,
     "spec.ingress[0].fromEntities[0]", '"nope" is not a supported entity (supported: host, world, all, cluster)'),

    # ---- Cilium rules: peers
    ("cnp-rule-unknown", cnp_ingress({"fromEndpoint": [{}]}), CNPW, "spec.ingress[0].fromEndpoint", "unknown field"),
    ("cnp-egress-field-in-ingress", cnp_ingress({"toEndpoints": [{}]}), CNPW, "spec.ingress[0].toEndpoints",
     "unknown field"),
    ("cnp-fqdn", cnp({"egress": [{"toFQDNs": [{"matchName": "x.com"}]}]}), CNPW, "spec.egress[0].toFQDNs",
     "is not supported by capillary"),
    ("cnp-requires", cnp_ingress({"fromRequires": [{}]}), CNPW, "spec.ingress[0].fromRequires",
     "is not supported by capillary"),
    ("cnp-entity", cnp_ingress({"fromEntities": ["remote-node"]}), CNPW, "spec.ingress[0].fromEntities[0]",
     '"remote-node" is not a supported entity (supported: host, world, all, cluster)'),
    ("cnp-entity-deny", cnp({"egressDeny": [{"toEntities": ["world", "kube-apiserver"]}]}), CNPW,
     "spec.egressDeny[0].toEntities[1]",
     '"kube-apiserver" is not a supported entity (supported: host, world, all, cluster)'),
    ("cnp-combined-l3", cnp_ingress({"fromEndpoints": [{}], "fromCIDR": ["10.0.0.0/8"]}), CNPW, "spec.ingress[0]",
     "fromEndpoints and fromCIDR cannot be combined in one rule (Cilium refuses this too): write two rules"),
    ("cnp-combined-l3-egress", cnp({"egress": [{"toEntities": ["world"], "toCIDRSet": [{"cidr": "1.0.0.0/8"}]}]}),
     CNPW, "spec.egress[0]",
     "toEntities and toCIDRSet cannot be combined in one rule (Cilium refuses this too): write two rules"),
    ("cnp-ports-and-icmps", cnp({"egress": [{"toPorts": [{"ports": [{"port": "80"}]}],
                                            "icmps": [{"fields": [{"type": 8}]}]}]}), CNPW, "spec.egress[0]",
     "toPorts and icmps cannot be combined in one rule (Cilium refuses this too): write two rules"),
    ("cnp-endpoint-bad", cnp_ingress({"fromEndpoints": [{"matchLabels": {"app": "a b"}}]}), CNPW,
     "spec.ingress[0].fromEndpoints[0].matchLabels.app", '"a b" is not a valid label value'),
    ("cnp-cidr-ipv6", cnp_ingress({"fromCIDR": ["::1"]}), CNPW, "spec.ingress[0].fromCIDR[0]",
     '"::1": IPv6 is not supported'),
    ("cnp-cidr-host-bits", cnp({"egress": [{"toCIDR": ["10.0.0.1/8"]}]}), CNPW, "spec.egress[0].toCIDR[0]",
     '"10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)'),
    ("cnp-cidr-garbage", cnp_ingress({"fromCIDR": ["example.com"]}), CNPW, "spec.ingress[0].fromCIDR[0]",
     '"example.com" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("cnp-cidrset-bare", cnp_ingress({"fromCIDRSet": [{"cidr": "10.0.0.1"}]}), CNPW,
     "spec.ingress[0].fromCIDRSet[0].cidr", '"10.0.0.1" is not a valid CIDR (address/prefix length, e.g. 10.0.0.0/8)'),
    ("cnp-cidrset-except", cnp_ingress({"fromCIDRSet": [{"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}]}), CNPW,
     "spec.ingress[0].fromCIDRSet[0].except[0]", '"10.1.0.0/24" is not inside cidr "10.0.0.0/16"'),
    ("cnp-cidrset-ipv6-except", cnp_ingress({"fromCIDRSet": [{"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}]}), CNPW,
     "spec.ingress[0].fromCIDRSet[0].except[0]", '"fd00::/64": IPv6 is not supported'),
    ("cnp-cidr-group", cnp_ingress({"fromCIDRSet": [{"cidrGroupRef": "x"}]}), CNPW,
     "spec.ingress[0].fromCIDRSet[0].cidrGroupRef", "is not supported by capillary"),

    # ---- Cilium rules: ports and ICMP
    ("cnp-port-bad", cnp_port({"port": "abc!"}), CNPW, f"{CNP_PORT}.port", '"abc!" is not a port number or name'),
    ("cnp-port-high", cnp_port({"port": "70000"}), CNPW, f"{CNP_PORT}.port", "70000 is not a port number (0-65535)"),
    ("cnp-port-high-int", cnp_port({"port": 65536}), CNPW, f"{CNP_PORT}.port", "65536 is not a port number (0-65535)"),
    ("cnp-port-leading-zero", cnp_port({"port": "080"}), CNPW, f"{CNP_PORT}.port", '"080" is not a port number or name'),
    ("cnp-port-long-name", cnp_port({"port": "a" * 16}), CNPW, f"{CNP_PORT}.port",
     f'"{"a" * 16}" is not a port number or name'),
    ("cnp-port-missing", cnp_port({"protocol": "TCP"}), CNPW, f"{CNP_PORT}.port", "required field is missing"),
    ("cnp-protocol", cnp_port({"port": "80", "protocol": "ICMP"}), CNPW, f"{CNP_PORT}.protocol",
     '"ICMP" is not supported (use TCP, UDP, SCTP or ANY; ICMP goes in icmps)'),
    ("cnp-protocol-unknown", cnp_port({"port": "80", "protocol": "QUIC"}), CNPW, f"{CNP_PORT}.protocol",
     '"QUIC" is not supported (use TCP, UDP, SCTP or ANY; ICMP goes in icmps)'),
    ("cnp-endport-less", cnp_port({"port": "90", "endPort": 80}), CNPW, f"{CNP_PORT}.endPort", "80 is less than port 90"),
    ("cnp-endport-named", cnp_port({"port": "http", "endPort": 90}), CNPW, f"{CNP_PORT}.endPort",
     "cannot be used with a named port"),
    ("cnp-endport-zero-port", cnp_port({"port": "0", "endPort": 90}), CNPW, f"{CNP_PORT}.endPort",
     "needs a port number in port"),
    ("cnp-port-unknown", cnp_port({"port": "80", "proto": "TCP"}), CNPW, f"{CNP_PORT}.proto", "unknown field"),
    ("cnp-toports-no-ports", cnp_ingress({"toPorts": [{}]}), CNPW, "spec.ingress[0].toPorts[0].ports",
     "required field is missing"),
    ("cnp-toports-empty-ports", cnp_ingress({"toPorts": [{"ports": []}]}), CNPW, "spec.ingress[0].toPorts[0].ports",
     "must not be empty"),
    ("cnp-l7", cnp_ingress({"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": []}}]}), CNPW,
     "spec.ingress[0].toPorts[0].rules", "is not supported by capillary"),
    ("cnp-l7-in-deny", cnp({"ingressDeny": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {}}]}]}), CNPW,
     "spec.ingressDeny[0].toPorts[0].rules", "unknown field"),
    ("cnp-shorthand-zero", cnp_ingress({"toPorts": [0]}), CNPW, "spec.ingress[0].toPorts[0]",
     "0 is not a port number (1-65535)"),
    ("cnp-shorthand-high", cnp({"egress": [{"toPorts": [443, "70000"]}]}), CNPW, "spec.egress[0].toPorts[1]",
     "70000 is not a port number (1-65535)"),
    ("cnp-shorthand-name", cnp_ingress({"toPorts": ["https"]}), CNPW, "spec.ingress[0].toPorts[0]",
     "expected a mapping, got a string"),
    ("cnp-icmp-ipv6", cnp_ingress({"icmps": [{"fields": [{"type": 128, "family": "IPv6"}]}]}), CNPW,
     "spec.ingress[0].icmps[0].fields[0].family", "IPv6 is not supported"),
    ("cnp-icmp-family", cnp_ingress({"icmps": [{"fields": [{"type": 8, "family": "ipv4"}]}]}), CNPW,
     "spec.ingress[0].icmps[0].fields[0].family", '"ipv4" is not a family (use IPv4)'),
    ("cnp-icmp-type-high", cnp_ingress({"icmps": [{"fields": [{"type": 8}, {"type": 256}]}]}), CNPW,
     "spec.ingress[0].icmps[0].fields[1].type", "256 is not an ICMP type (0-255)"),
    ("cnp-icmp-type-name", cnp_ingress({"icmps": [{"fields": [{"type": "EchoRequest"}]}]}), CNPW,
     "spec.ingress[0].icmps[0].fields[0].type", '"EchoRequest" is not an ICMP type (0-255)'),
    ("cnp-icmp-no-type", cnp_ingress({"icmps": [{"fields": [{"family": "IPv4"}]}]}), CNPW,
     "spec.ingress[0].icmps[0].fields[0].type", "required field is missing"),
    ("cnp-icmp-no-fields", cnp_ingress({"icmps": [{}]}), CNPW, "spec.ingress[0].icmps[0].fields",
     "required field is missing"),
]


@pytest.mark.parametrize("doc, where, path, problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_errors_name_the_field(doc, where, path, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert (info.value.where, info.value.path, info.value.problem) == (where, path, problem)
    assert str(info.value) == f"{where}: {path}: {problem}"


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("doc", [None, [], "kind: NetworkPolicy"])
def test_document_must_be_a_mapping(doc):
    with pytest.raises(PolicyError, match="^policy: document: expected a mapping"):
        parse_policy(doc)


def test_policy_error_is_a_value_error():
    assert issubclass(PolicyError, ValueError)


@pytest.mark.parametrize("name, valid", [
    ("http", True), ("h2c", True), ("web-8080", True), ("a" * 15, True), ("x", True), ("8080-x", True),
    ("", False), ("a" * 16, False), ("-http", False), ("http-", False), ("ht--tp", False), ("1234", False),
    ("HTTP", False), ("ht_tp", False), ("ht.tp", False),
])
def test_port_names_are_iana_service_names(name, valid):
    assert is_port_name(name) is valid


@pytest.mark.parametrize("value, cilium, expected", [
    (80, False, 80), ("http", False, NAMED_PORT), (80, True, 80), ("80", True, 80), ("0", True, 0),
    (0, True, 0), ("Http-Alt", True, NAMED_PORT),
])
def test_port_value(value, cilium, expected):
    assert port_value(value, "p", cilium=cilium) == expected
