"""`capillary walk` on a real node: a real probe, the hops it took from the datapath's own
events, and the exit status. Allowed and denied in redirect mode, and the host-stack path
with its kernel route and iptables rule."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers

PORT = 80
ALLOW_A_TO_B = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "b-from-a", "namespace": "w"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                          "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}]},
}


def pods(node, namespace: str = "w") -> Servers:
    node.apply(docs(namespace_doc(namespace), *(pod_doc(namespace, n, {"app": n}) for n in "abc")))
    servers = Servers()
    servers.start(node.netns(f"{namespace}/b"), PORT)
    return servers


@pytest.fixture(scope="module")
def walk_node(node):
    servers = pods(node)
    node.apply(yaml.safe_dump(ALLOW_A_TO_B))
    try:
        yield node
    finally:
        servers.close()
        node.cli("delete", "cnp", "b-from-a", "-n", "w")
        node.cli("delete", "namespace", "w")


def walk(node, *args: str) -> tuple[int, dict]:
    proc = node.cli("walk", *args, "-o", "json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def summary(result: dict) -> list[tuple[str, str]]:
    return [(hop["where"].split()[0], hop["what"].split(":")[0].split(" (")[0]) for hop in result["hops"]]


def test_an_allowed_connection_is_redirected_straight_into_the_peer(walk_node):
    node = walk_node
    rc, result = walk(node, "w/a", "w/b", "--port", str(PORT))
    pods_ = node.pods()
    lxc_a, lxc_b = pods_["w/a"]["status"]["hostInterface"], pods_["w/b"]["status"]["hostInterface"]
    assert rc == 0 and result["result"] == "DELIVERED" and result["probe"]["outcome"] == "answered"
    hops = result["hops"]
    assert [h["where"] for h in hops] == ["w/a eth0", f"host {lxc_a}", f"host {lxc_a}", f"host {lxc_a}",
                                          f"host {lxc_a}", "w/b eth0"]
    assert hops[0]["details"] == [f"route: {node.pod_ip('w/b')} via {node.router_ip} dev eth0"]
    assert hops[1]["what"].startswith(f"from_container (tc ingress), endpoint {result['source']['endpoint_id']}")
    assert (hops[2]["verdict"], hops[2]["rule"]["name"]) == ("ALLOWED", "default-allow")
    assert (hops[3]["verdict"], hops[3]["rule"]["kind"], hops[3]["rule"]["name"], hops[3]["rule"]["namespace"]) == \
        ("ALLOWED", "CiliumNetworkPolicy", "b-from-a", "w")
    assert hops[4]["what"] == f"bpf_redirect_peer into w/b eth0 (the peer of {lxc_b})"
    assert hops[5]["what"] == "delivered"
    assert all(hop["flows"] for hop in hops[1:]), "every datapath hop rests on a flow"
    assert any("SYN, ACK" in line for line in result["reply"])


def test_a_denied_connection_stops_where_it_was_dropped(walk_node):
    rc, result = walk(walk_node, "w/c", "w/b", "--port", str(PORT))
    assert rc == 1 and result["result"] == "DROPPED"
    hops = result["hops"]
    assert [h["verdict"] for h in hops] == ["", "", "ALLOWED", "DENIED", "DROPPED"]
    assert hops[3]["rule"] == {"kind": "Default", "name": "default-deny", "namespace": "", "labels": [],
                               "rule_index": 0}
    assert hops[4]["what"] == "DROPPED: POLICY_DENIED (drop reason 133)"
    assert result["probe"]["outcome"] == "dropped"        # no need to wait out the timeout


def test_udp_and_icmp(walk_node):
    rc, result = walk(walk_node, "w/a", "w/c", "--protocol", "udp", "--port", "9")
    assert rc == 0 and result["probe"]["outcome"] == "refused"       # delivered, nothing listens
    rc, result = walk(walk_node, "w/b", "w/a", "--protocol", "icmp")
    assert rc == 0 and result["probe"]["outcome"] == "answered"
    assert result["hops"][0]["what"].startswith("sends ICMP echo request")
    assert any("EchoReply" in line for line in result["reply"])
    rc, result = walk(walk_node, "w/a", "w/b", "--protocol", "icmp")     # b allows TCP/80 from a only
    assert rc == 1 and result["result"] == "DROPPED"


def test_text_output_numbers_the_hops_in_order(walk_node):
    proc = walk_node.cli("walk", "w/a", "w/b", "--port", str(PORT))
    lines = proc.stdout.splitlines()
    numbered = [line.split()[0] for line in lines if line[:2].strip().isdigit()]
    assert numbered == ["1", "2", "3", "4", "5", "6"]
    text = proc.stdout
    order = ["w/a eth0", "from_container", "egress policy of w/a: ALLOWED by default-allow",
             "ingress policy of w/b: ALLOWED by CiliumNetworkPolicy w/b-from-a rule 0", "bpf_redirect_peer",
             "w/b eth0", "DELIVERED: the destination answered"]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)


def test_bad_input_is_refused_with_the_reason(walk_node):
    for args, message in ((["w/nope", "w/b", "--port", "80"], 'pod "w/nope" not found'),
                          (["w/a", "w/b"], "--port: 0 is not a port"),
                          (["w/a", "w/b", "--port", "70000"], "--port: 70000 is not a port")):
        proc = walk_node.cli("walk", *args, check=False)
        assert proc.returncode == 1 and message in proc.stderr
    assert subprocess.run(["pgrep", "-f", "services.cli.probe"], capture_output=True).returncode == 1


def test_host_stack_mode_walks_through_the_kernel_route_and_iptables(host_stack_node):
    node = host_stack_node
    servers = pods(node, "hsw")
    try:
        rc, result = walk(node, "hsw/a", "hsw/b", "--port", str(PORT))
        lxc_a = node.pods()["hsw/a"]["status"]["hostInterface"]
        lxc_b = node.pods()["hsw/b"]["status"]["hostInterface"]
        assert rc == 0 and result["result"] == "DELIVERED"
        assert [h["where"] for h in result["hops"]] == ["hsw/a eth0", f"host {lxc_a}", f"host {lxc_a}",
                                                        f"host {lxc_a}", "host stack", f"host {lxc_b}", "hsw/b eth0"]
        stack = result["hops"][4]
        assert stack["details"][0] == f"route: {node.pod_ip('hsw/b')} dev {lxc_b}"
        iptables = [d for d in stack["details"] if d.startswith("iptables: ")]
        assert any(f"CAPILLARY-FORWARD" in d and node.pod_cidr in d for d in iptables), iptables
        assert result["hops"][5]["flows"], "to_container reported the packet entering hsw/b"
    finally:
        servers.close()
        node.cli("delete", "namespace", "hsw")
