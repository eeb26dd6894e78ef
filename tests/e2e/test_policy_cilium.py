"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy on the real datapath: the seed
article's example, deny over allow, audit, entities, CIDRs, ICMP, and safe updates."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.policy_model import PROBER, everything
from tests.support.node import docs, pod_doc
from tests.support.traffic import Servers, ping, probe

SEED = Path(__file__).resolve().parents[2] / "examples" / "allow-https.yaml"


def cnp(name: str, namespace: str, spec: dict, audit: bool = False) -> dict:
    meta = {"name": name, "namespace": namespace}
    if audit:
        meta["annotations"] = {"policy.capillary.io/audit": "true"}
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": meta, "spec": spec}


def sel(**labels) -> dict:
    return {"matchLabels": labels}


def drops(node, reason: str) -> float:
    import urllib.request
    port = node.status()["services"]["flowd"]["metrics_port"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("cilium_drop_count_total") and f'reason="{reason}"' in line)


def test_seed_allow_https_example(node, model):
    node.apply(docs(pod_doc("default", "server", {"app": "https-server"}),
                    pod_doc("default", "client", {"app": "https-client"}),
                    pod_doc("default", "other", {"app": "other"})))
    servers = Servers()
    try:
        servers.start(node.netns("default/server"), 443, 80)
        r = node.cli("apply", "-f", str(SEED))
        assert "ciliumnetworkpolicy/allow-https created" in r.stdout
        assert "Warning:" in r.stderr and "apiVersion: cilium.io/v2" in r.stderr and "port: '443'" in r.stderr
        stored = yaml.safe_load(node.cli("get", "policies", "-o", "yaml").stdout)["items"]
        assert stored[0]["apiVersion"] == "cilium.io/v2"
        assert stored[0]["spec"]["ingress"][0]["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
        ip = node.pod_ip("default/server")
        assert probe(node.netns("default/client"), "tcp", ip, 443)
        assert not probe(node.netns("default/client"), "tcp", ip, 80)
        assert not probe(node.netns("default/other"), "tcp", ip, 443)
        assert not probe(node.netns("default/other"), "udp", ip, 443)
        table = node.cli("bpf", "policy", "get", "default/server").stdout
        assert "TCP/443" in table and "CiliumNetworkPolicy/default/allow-https ingress[0]" in table
        assert "default: deny" in table
    finally:
        servers.close()
        node.cli("delete", "cnp", "allow-https")
        node.cli("delete", "pod", "default/server", "default/client", "default/other")


def test_deny_beats_allow(node, model, policies):
    before = drops(node, "Policy denied by denylist")
    policies(cnp("allow-ns-but-b", "x", {"endpointSelector": sel(pod="a"),
                                         "ingress": [{"fromEndpoints": [{}]}],
                                         "ingressDeny": [{"fromEndpoints": [sel(pod="b")]}]}))
    model.check(lambda s, d, p, port: d != "x/a" or s == "x/c")
    assert drops(node, "Policy denied by denylist") > before


def test_deny_a_port_for_everyone(node, model, policies):
    policies(cnp("no-81", "y", {"endpointSelector": {}, "ingressDeny": [{"toPorts": [{"ports": [{"port": "81"}]}]}],
                                "enableDefaultDeny": {"ingress": False}}))
    model.check(lambda s, d, p, port: not (d.startswith("y/") and port == 81))


def test_policy_audit_mode_lets_drops_through_and_reports_them(node, model, policies):
    policies(cnp("audit-deny", "x", {"endpointSelector": sel(pod="b"), "ingress": [{"fromEndpoints": [sel(pod="c")]}]},
                 audit=True))
    model.check(everything)
    entries = json.loads(node.cli("bpf", "policy", "get", "x/b", "-o", "json").stdout)
    default = next(e for e in entries if e["direction"] == "ingress" and e["prefixlen"] == 32)
    assert default["flags"] == 4 | 1 | 2 and default["packets"] > 0          # DEFAULT|DENY|AUDIT, counted
    conns = json.loads(node.cli("bpf", "ct", "list", "-o", "json").stdout)
    assert any(c["audit"] and c["destination"] == model.ip["x/b"] for c in conns)


def test_endpoint_audit_mode(node, model, policies):
    node.apply(pod_doc("x", "audited", {"pod": "audited"}).replace(
        "metadata:", "metadata:\n  annotations: {policy.capillary.io/audit: 'true'}"))
    servers = Servers()
    try:
        servers.start(node.netns("x/audited"), 80)
        policies(cnp("deny-audited", "x", {"endpointSelector": sel(pod="audited"), "ingress": [{}]}))
        assert probe(model.netns["y/a"], "tcp", node.pod_ip("x/audited"), 80)
        conns = json.loads(node.cli("bpf", "ct", "list", "-o", "json").stdout)
        assert any(c["audit"] and c["destination"] == node.pod_ip("x/audited") for c in conns)
    finally:
        servers.close()
        node.cli("delete", "pod", "x/audited")


def test_entities_host_and_cluster(node, model, policies):
    policies(cnp("egress-host-only", "x", {"endpointSelector": sel(pod="a"), "egress": [{"toEntities": ["host"]}]}),
             cnp("ingress-cluster", "y", {"endpointSelector": sel(pod="a"), "ingress": [{"fromEntities": ["cluster"]}]}))
    assert ping(model.netns["x/a"], node.router_ip)
    model.check(lambda s, d, p, port: s != "x/a")
    assert probe(None, "tcp", model.ip["y/a"], 80)            # the host is in the cluster entity


def test_icmp_rules(node, model, policies):
    policies(cnp("ping-only", "z", {"endpointSelector": sel(pod="a"),
                                    "ingress": [{"icmps": [{"fields": [{"type": 8}]}]}]}))
    assert ping(model.netns["x/a"], model.ip["z/a"])
    assert not probe(model.netns["x/a"], "tcp", model.ip["z/a"], 80)


def test_clusterwide_policy_selects_in_every_namespace(node, model, policies):
    policies({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
              "metadata": {"name": "c-from-a"},
              "spec": {"endpointSelector": sel(pod="c"), "ingress": [{"fromEndpoints": [sel(pod="a")]}]}})
    model.check(lambda s, d, p, port: not d.endswith("/c") or s.endswith("/a"))


@pytest.fixture
def world(node):
    """A namespace outside the node (198.18.0.0/24, the benchmarking range) with echo servers
    on .2 and .130, routed from the host."""
    name, host_if = f"ext{node.tag}", f"ext{node.tag}h"
    run = lambda *a: subprocess.run(a, check=True)
    run("ip", "netns", "add", name)
    servers = Servers()
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "addr", "add", "198.18.0.1/24", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        for cmd in (["addr", "add", "198.18.0.2/24", "dev", "eth0"], ["addr", "add", "198.18.0.130/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"],
                    ["route", "add", "default", "via", "198.18.0.1"]):
            run("ip", "-n", name, *cmd)
        servers.start(f"/run/netns/{name}", 80)
        yield
    finally:
        servers.close()
        subprocess.run(["ip", "link", "del", host_if])
        subprocess.run(["ip", "netns", "del", name])


def test_cidr_set_with_except(node, model, world, policies):
    netns = model.netns["x/a"]
    assert probe(netns, "tcp", "198.18.0.2", 80) and probe(netns, "tcp", "198.18.0.130", 80)
    policies(cnp("to-cidr", "x", {"endpointSelector": sel(pod="a"),
                                  "egress": [{"toCIDRSet": [{"cidr": "198.18.0.0/24", "except": ["198.18.0.128/25"]}]}]}))
    assert probe(netns, "tcp", "198.18.0.2", 80)
    assert not probe(netns, "tcp", "198.18.0.130", 80)
    assert not probe(netns, "tcp", model.ip["y/a"], 80)
    ipcache = node.cli("get", "ipcache").stdout
    assert "198.18.0.0/24" in ipcache and "198.18.0.128/25" in ipcache and "cidr-policy" in ipcache


def test_k8s_ip_block_and_world_entity(node, model, world, policies):
    netns = model.netns["y/b"]
    policies({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "ipb", "namespace": "y"},
              "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.128/25"}}]}]}})
    assert probe(netns, "tcp", "198.18.0.130", 80) and not probe(netns, "tcp", "198.18.0.2", 80)
    policies(cnp("world", "y", {"endpointSelector": sel(pod="b"), "egress": [{"toEntities": ["world"]}]}))
    assert probe(netns, "tcp", "198.18.0.2", 80)
    assert not probe(netns, "tcp", model.ip["x/a"], 80)


def _loop(model, src: str, targets: list, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net={model.netns[src]}", "--", sys.executable, PROBER, "loop",
                             str(seconds), json.dumps(targets)], stdout=subprocess.PIPE, text=True)


def test_updates_never_flip_what_old_and_new_agree_on(node, model, policies):
    a, b = [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"ns": "y"}}}], \
        [{"podSelector": {"matchLabels": {"pod": "a"}}, "namespaceSelector": {}}]
    variants = [{"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": peers, "ports": [{"port": 80}, {"protocol": "UDP", "port": 80}][:n]}]}
                for peers, n in ((a, 1), (b, 2))]
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "flip", "namespace": "x"}}
    policies({**doc, "spec": variants[0]})
    ip = model.ip["x/a"]
    loop = _loop(model, "y/a", [["tcp", ip, 80], ["tcp", ip, 81], ["udp", ip, 81]], 12)
    for i in range(12):
        node.apply(yaml.safe_dump({**doc, "spec": variants[(i + 1) % 2]}))
        time.sleep(0.3)
    counts = json.loads(loop.communicate(timeout=60)[0])
    assert counts[f"tcp {ip} 80"][1] == 0 and counts[f"tcp {ip} 80"][0] > 20, counts
    assert counts[f"tcp {ip} 81"][0] == 0 and counts[f"udp {ip} 81"][0] == 0, counts


def test_policyd_restart_keeps_enforcement(node, model, policies):
    policies(cnp("only-b", "z", {"endpointSelector": sel(pod="a"), "ingress": [{"fromEndpoints": [sel(pod="b")]}]}))
    ip = model.ip["z/a"]
    allowed, denied = _loop(model, "z/b", [["tcp", ip, 80]], 8), _loop(model, "x/b", [["tcp", ip, 80]], 8)
    time.sleep(1)
    os.kill(node.service_pid("policyd"), signal.SIGKILL)
    a = json.loads(allowed.communicate(timeout=60)[0])[f"tcp {ip} 80"]
    d = json.loads(denied.communicate(timeout=60)[0])[f"tcp {ip} 80"]
    assert a[1] == 0 and a[0] > 10 and d[0] == 0 and d[1] > 0, (a, d)
    node.wait_healthy()


def test_pod_created_after_a_policy_is_covered_from_its_first_packet(node, model, policies):
    policies(cnp("late", "x", {"endpointSelector": sel(pod="late"), "ingress": [{}]}))
    node.apply(pod_doc("x", "late", {"pod": "late"}))
    try:
        entries = json.loads(node.cli("bpf", "policy", "get", "x/late", "-o", "json").stdout)
        assert any(e["direction"] == "ingress" and e["flags"] == 4 | 1 for e in entries)
        servers = Servers()
        servers.start(node.netns("x/late"), 80)
        try:
            assert not probe(model.netns["y/a"], "tcp", node.pod_ip("x/late"), 80)
        finally:
            servers.close()
    finally:
        node.cli("delete", "pod", "x/late")


CONNECT_FROM_PORT = """
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
s.bind(("", int(sys.argv[3])))
s.settimeout(1)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
s.close()
"""


def test_a_reused_four_tuple_meets_the_current_policy(node, model, policies):
    """Conntrack must not let a new connection through on an old connection's entry."""
    ip, src = model.ip["x/c"], model.netns["y/c"]
    connect = ["nsenter", f"--net={src}", "--", sys.executable, "-c", CONNECT_FROM_PORT, ip, "80", "40123"]
    policies(cnp("allow-y", "x", {"endpointSelector": sel(pod="c"),
                                  "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}}]}]}))
    assert subprocess.run(connect).returncode == 0
    node.apply(yaml.safe_dump(cnp("allow-y", "x", {"endpointSelector": sel(pod="c"), "ingress": [{}]})))
    assert subprocess.run(connect).returncode != 0
