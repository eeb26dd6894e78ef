"""Pods on a real node: lifecycle, the datapath's view of them, connectivity, redirect proof."""
import ipaddress
import subprocess
from pathlib import Path

import pytest

from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.maps.metrics import MetricsMap
from services.datapath.numbers import METRIC_EGRESS, REASON_ARP_REPLY, REASON_REDIRECT_PEER
from services.routed.iptables import forward_packets
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe

PODS = ("x/a", "x/b", "y/c")
PORT = 8080


@pytest.fixture(scope="module")
def pods(node):
    node.apply(docs(namespace_doc("x", {"team": "one"}), namespace_doc("y"),
                    pod_doc("x", "a"), pod_doc("x", "b"), pod_doc("y", "c")))
    servers = Servers()
    try:
        for ref in PODS:
            servers.start(node.netns(ref), PORT)
        yield {ref: node.pod_ip(ref) for ref in PODS}
    finally:
        servers.close()


def _tc_ingress(ifname: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", ifname, "ingress"], capture_output=True, text=True).stdout


def test_pod_has_netns_veth_ip_route_and_program(node, pods):
    pod = node.pods()["x/a"]
    ip, ifname = pod["status"]["podIP"], pod["status"]["hostInterface"]
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(node.pod_cidr)
    assert ifname.startswith(node.lxc_prefix) and len(ifname) == 15
    assert "from_container" in _tc_ingress(ifname) and "direct-action" in _tc_ingress(ifname)
    assert Path(pod["spec"]["netns"]).exists()
    inside = node.run_in("x/a", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"{ip}/32" in inside
    routes = node.run_in("x/a", "ip", "route").stdout
    assert f"default via {node.router_ip} dev eth0" in routes
    assert "state UNKNOWN" in node.run_in("x/a", "ip", "link", "show", "lo").stdout or \
           "UP" in node.run_in("x/a", "ip", "link", "show", "lo").stdout
    host_route = subprocess.run(["ip", "route", "show", f"{ip}/32"], capture_output=True, text=True).stdout
    assert f"dev {ifname}" in host_route


def test_maps_hold_every_pod(node, pods):
    root = Path(node.bpf_root)
    endpoints = EndpointMap(root).all()
    ipcache = IpcacheMap(root).all()
    listed = node.pods()
    for ref, ip in pods.items():
        status = listed[ref]["status"]
        assert endpoints[ip].ifindex == status["hostIfindex"]
        assert endpoints[ip].identity == status["identity"] == ipcache[f"{ip}/32"]
        assert endpoints[ip].pod_mac == status["mac"]
    assert ipcache["0.0.0.0/0"] == 2                       # world
    assert ipcache[f"{node.router_ip}/32"] == 1            # host


def test_get_outputs(node, pods):
    table = node.cli("get", "pods", "-A").stdout
    assert "x           a" in table.replace("  ", "  ") or ("x" in table and pods["x/a"] in table)
    wide = node.cli("get", "pods", "-n", "x", "-o", "wide").stdout
    assert pods["x/a"] in wide and node.lxc_prefix in wide and pods["y/c"] not in wide
    ns = node.cli("get", "namespaces").stdout
    assert "kubernetes.io/metadata.name=x" in ns and "team=one" in ns and "default" in ns
    yaml_out = node.cli("get", "pods", "-A", "-o", "yaml").stdout
    assert f"podIP: {pods['y/c']}" in yaml_out


def test_exec_runs_inside_the_pod(node, pods):
    out = node.cli("exec", "x/a", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert pods["x/a"] in out


@pytest.mark.parametrize("src", PODS)
@pytest.mark.parametrize("dst", PODS)
def test_connectivity_matrix(node, pods, src, dst):
    if src == dst:
        pytest.skip("a pod to itself is covered by loopback")
    netns, ip = node.netns(src), pods[dst]
    assert ping(netns, ip), f"ICMP {src} -> {dst}"
    assert probe(netns, "tcp", ip, PORT), f"TCP {src} -> {dst}"
    assert probe(netns, "udp", ip, PORT), f"UDP {src} -> {dst}"


def test_pod_to_host_and_host_to_pod(node, pods):
    netns = node.netns("x/a")
    assert ping(netns, node.router_ip)
    host_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
    assert ping(netns, host_ip)
    assert ping(None, pods["x/a"])
    assert probe(None, "tcp", pods["x/a"], PORT)
    assert probe(None, "udp", pods["x/a"], PORT)


def test_pod_to_pod_takes_redirect_peer_not_the_host_stack(node, pods):
    counters = MetricsMap(Path(node.bpf_root))
    before_fwd = forward_packets(node.pod_cidr)
    before_redirect = counters.read(METRIC_EGRESS, REASON_REDIRECT_PEER).packets
    for _ in range(5):
        assert probe(node.netns("x/a"), "tcp", pods["y/c"], PORT)
    assert ping(node.netns("x/b"), pods["x/a"], count=5)
    assert forward_packets(node.pod_cidr) == before_fwd
    assert counters.read(METRIC_EGRESS, REASON_REDIRECT_PEER).packets - before_redirect >= 5 * 4 + 10


def test_arp_for_the_router_is_answered_in_bpf(node, pods):
    counters = MetricsMap(Path(node.bpf_root))
    before = counters.read(METRIC_EGRESS, REASON_ARP_REPLY).packets
    netns = node.netns("x/a")
    subprocess.run(["nsenter", f"--net={netns}", "ip", "neigh", "flush", "dev", "eth0"], check=True)
    assert ping(netns, node.router_ip)
    neigh = node.run_in("x/a", "ip", "neigh", "show", node.router_ip).stdout
    host_mac = node.pods()["x/a"]["status"]["hostInterface"]
    lxc_mac = Path(f"/sys/class/net/{host_mac}/address").read_text().strip()
    assert lxc_mac in neigh
    assert counters.read(METRIC_EGRESS, REASON_ARP_REPLY).packets > before


def test_spoofed_source_is_dropped(node, pods):
    # A pod that uses another pod's address gets nothing through.
    netns = node.netns("x/a")
    subprocess.run(["nsenter", f"--net={netns}", "ip", "addr", "add", f"{pods['x/b']}/32", "dev", "eth0"], check=True)
    try:
        r = subprocess.run(["nsenter", f"--net={netns}", "ping", "-c", "1", "-W", "1", "-I", pods["x/b"], pods["y/c"]],
                           capture_output=True)
        assert r.returncode != 0
    finally:
        subprocess.run(["nsenter", f"--net={netns}", "ip", "addr", "del", f"{pods['x/b']}/32", "dev", "eth0"], check=True)


def test_delete_removes_everything_and_frees_the_ip(node, pods):
    node.apply(pod_doc("y", "tmp"))
    pod = node.pods()["y/tmp"]
    ip, ifname, netns = pod["status"]["podIP"], pod["status"]["hostInterface"], pod["spec"]["netns"]
    node.cli("delete", "pod", "y/tmp")
    assert "y/tmp" not in node.pods()
    assert subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode != 0
    assert not Path(netns).exists()
    assert EndpointMap(Path(node.bpf_root)).get(ip) is None
    assert f"{ip}/32" not in IpcacheMap(Path(node.bpf_root)).all()
    assert not subprocess.run(["ip", "route", "show", f"{ip}/32"], capture_output=True, text=True).stdout


def test_delete_by_file(node, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(docs(namespace_doc("z"), pod_doc("z", "p1"), pod_doc("z", "p2")))
    node.cli("apply", "-f", str(f))
    assert {"z/p1", "z/p2"} <= set(node.pods())
    out = node.cli("delete", "-f", str(f)).stdout
    assert "pod/p1 deleted" in out and "namespace/z deleted" in out
    assert not {"z/p1", "z/p2"} & set(node.pods())


def test_apply_is_idempotent_and_create_is_not(node, pods):
    out = node.apply(pod_doc("x", "a")).stdout
    assert "pod/a unchanged" in out
    r = node.cli("create", "-f", "-", input=pod_doc("x", "a"), check=False)
    assert r.returncode != 0 and 'pod "x/a" already exists' in r.stderr


def test_adopt_an_existing_netns(node, pods):
    name = f"adopt-{node.tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        node.apply(pod_doc("y", "adopted", netns=f"/run/netns/{name}"))
        ip = node.pod_ip("y/adopted")
        assert ping(f"/run/netns/{name}", pods["x/a"])
        node.cli("delete", "pod", "y/adopted")
        assert Path(f"/run/netns/{name}").exists()          # not ours to remove
        links = subprocess.run(["ip", "-n", name, "-o", "link"], capture_output=True, text=True).stdout
        assert "eth0" not in links and ip
    finally:
        subprocess.run(["ip", "netns", "del", name])


def test_host_stack_mode_routes_through_the_kernel(host_stack_node):
    n = host_stack_node
    n.apply(docs(namespace_doc("h"), pod_doc("h", "a"), pod_doc("h", "b")))
    servers = Servers()
    try:
        servers.start(n.netns("h/b"), PORT)
        counters = MetricsMap(Path(n.bpf_root))
        before_fwd = forward_packets(n.pod_cidr)
        before_redirect = counters.read(METRIC_EGRESS, REASON_REDIRECT_PEER).packets
        ip_b = n.pod_ip("h/b")
        assert ping(n.netns("h/a"), ip_b, count=3)
        assert probe(n.netns("h/a"), "tcp", ip_b, PORT)
        assert probe(n.netns("h/a"), "udp", ip_b, PORT)
        assert forward_packets(n.pod_cidr) - before_fwd >= 6
        assert counters.read(METRIC_EGRESS, REASON_REDIRECT_PEER).packets == before_redirect
    finally:
        servers.close()
