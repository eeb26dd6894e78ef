"""Every service of a real node is scraped and its metrics checked against what Hubble and
Cilium expose: name, type and label set, with Hubble's context options set in the node config
(the label values they take checked too), after real traffic: forwarded, dropped by policy,
ICMP, and to the world (denied in the datapath, so nothing leaves the machine)."""
from __future__ import annotations

import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.node import Node, docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

SERVICES = ("endpointd", "policyd", "routed", "flowd")
HUBBLE_METRICS = [
    "flow:sourceContext=namespace;destinationContext=pod|ip;labelsContext=source_app,destination_app,traffic_direction",
    "drop", "policy",
    "tcp:sourceContext=workload|pod",
    "port-distribution:destinationContext=app",
    "icmp:sourceContext=identity",
    "flows-to-world:any-drop;port;labelsContext=source_namespace",
]
CONTEXT = ("source", "destination", "source_app", "destination_app", "traffic_direction")

# name (without _total) -> (services exporting it, type, label set), as Hubble's and Cilium's
# metrics reference lists them, plus the labels the context options above add.
EXPECTED = {
    "hubble_flows_processed": (("flowd",), "counter", {*CONTEXT, "protocol", "type", "subtype", "verdict"}),
    "hubble_drop": (("flowd",), "counter", {"reason", "protocol"}),
    "hubble_policy_verdicts": (("flowd",), "counter", {"direction", "match", "action"}),
    "hubble_tcp_flags": (("flowd",), "counter", {"source", "flag", "family"}),
    "hubble_port_distribution": (("flowd",), "counter", {"destination", "protocol", "port"}),
    "hubble_icmp": (("flowd",), "counter", {"source", "family", "type"}),
    "hubble_flows_to_world": (("flowd",), "counter", {"source_namespace", "protocol", "verdict", "port"}),
    "hubble_lost_events": (("flowd",), "counter", {"source"}),
    "cilium_forward_count": (("flowd",), "counter", {"direction"}),
    "cilium_forward_bytes": (("flowd",), "counter", {"direction"}),
    "cilium_drop_count": (("flowd",), "counter", {"reason", "direction"}),
    "cilium_drop_bytes": (("flowd",), "counter", {"reason", "direction"}),
    "cilium_endpoint": (("endpointd",), "gauge", set()),
    "cilium_endpoint_state": (("endpointd",), "gauge", {"state"}),
    "cilium_policy": (("policyd",), "gauge", set()),
    "cilium_identity": (("policyd",), "gauge", {"type"}),
    "cilium_policy_implementation_delay": (("policyd",), "histogram", {"source"}),
    "cilium_bpf_map_ops": (("endpointd", "policyd", "routed"), "counter", {"map_name", "operation", "outcome"}),
    "cilium_bpf_map_pressure": (("endpointd", "policyd", "routed"), "gauge", {"map_name"}),
    "cilium_bpf_map_capacity": (("endpointd", "policyd", "routed"), "gauge", {"map_group"}),
}

GUARD = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "guard", "namespace": "mt"},
         "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}
NO_WORLD = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "no-world", "namespace": "mt"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
                     "egress": [{"toEntities": ["all"]}], "egressDeny": [{"toEntities": ["world"]}]}}
WORLD_IP = "198.51.100.7"           # TEST-NET-2: the world identity; denied before it leaves


def scrape(node: Node) -> dict[str, dict]:
    """service -> metric name -> {"type", "labels": [label sets of its samples]}."""
    out = {}
    for service in SERVICES:
        families = {}
        for f in text_string_to_metric_families(node.metrics(service)):
            if f.name.endswith("_created"):
                continue
            labels = [frozenset(k for k in s.labels if k != "le") for s in f.samples
                      if not s.name.endswith("_created")]
            families[f.name] = {"type": f.type, "labels": labels, "samples": f.samples}
        out[service] = families
    return out


@pytest.fixture(scope="module")
def metrics_node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("node"), hubble={"metrics": HUBBLE_METRICS})
    servers = Servers()
    try:
        node.up()
        node.apply(docs(namespace_doc("mt"), pod_doc("mt", "a", {"app": "a"}), pod_doc("mt", "b", {"app": "b"})))
        servers.start(node.netns("mt/b"), 80, 81)
        node.apply(yaml.safe_dump(GUARD))
        node.apply(yaml.safe_dump(NO_WORLD))
        yield node
    finally:
        servers.close()
        node.purge()
        assert not node.leftovers()


def test_every_service_exports_hubbles_and_ciliums_names_types_and_labels(metrics_node):
    node = metrics_node
    a, b = node.netns("mt/a"), node.pod_ip("mt/b")
    assert probe(a, "tcp", b, 80)                           # forwarded: SYN, SYN-ACK, FIN
    assert not probe(a, "tcp", b, 81)                       # dropped by policy
    assert ping(node.netns("mt/b"), node.pod_ip("mt/a"))    # ICMP echo, forwarded
    subprocess.run(["nsenter", f"--net={a}", "--", "ping", "-c1", "-W1", WORLD_IP], capture_output=True)
    wait_for(lambda: 'verdict="DROPPED"' in node.metrics("flowd").split("hubble_flows_to_world_total", 1)[-1],
             "a flow to the world counted")
    node.cli("delete", "cnp", "no-world", "-n", "mt")       # one policy change timed by the delay histogram
    scraped = scrape(node)
    wrong = []
    for name, (services, kind, labels) in EXPECTED.items():
        for service in services:
            family = scraped[service].get(name)
            if family is None:
                wrong.append(f"{service}: no {name}")
                continue
            if family["type"] != kind:
                wrong.append(f"{service}: {name} is a {family['type']}, not a {kind}")
            if not family["labels"]:
                wrong.append(f"{service}: {name} has no sample")
            wrong += [f"{service}: {name} has labels {sorted(got)}, not {sorted(labels)}"
                      for got in set(family["labels"]) if got != labels]
    assert not wrong, "\n".join(wrong)


def _samples(node: Node, name: str) -> list[dict]:
    return [s.labels for f in text_string_to_metric_families(node.metrics("flowd"))
            for s in f.samples if s.name == name]


def test_context_options_take_their_values_from_the_flows(metrics_node):
    node = metrics_node
    flows = _samples(node, "hubble_flows_processed_total")
    assert {"source": "mt", "destination": "mt/b", "source_app": "a", "destination_app": "b",
            "traffic_direction": "egress", "protocol": "TCP", "type": "Trace", "subtype": "from-endpoint",
            "verdict": "FORWARDED"} in flows
    assert any(f["destination"] == WORLD_IP and f["verdict"] == "DROPPED" for f in flows)
    assert {"source": "mt/a", "flag": "SYN", "family": "IPv4"} in _samples(node, "hubble_tcp_flags_total")
    assert {"destination": "b", "protocol": "TCP", "port": "80"} in _samples(node, "hubble_port_distribution_total")
    icmp = _samples(node, "hubble_icmp_total")
    assert any(s["type"] == "EchoRequest" and "k8s:app=b" in s["source"].split(",") for s in icmp), icmp
    assert {"source_namespace": "mt", "protocol": "ICMPv4", "verdict": "DROPPED", "port": "0"} in \
        _samples(node, "hubble_flows_to_world_total")


def test_a_bad_hubble_option_stops_the_node_config_naming_it(tmp_path):
    bad = Node(tmp_path, hubble={"metrics": ["flow:sourceContext=dns"]})
    proc = bad.cli("status", check=False)
    assert proc.returncode == 1 and "hubble.metrics[0]: flow: sourceContext='dns'" in proc.stderr, proc.stderr
