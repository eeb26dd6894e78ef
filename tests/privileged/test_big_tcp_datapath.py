"""IPv4 BIG TCP (datapath.bigTCP) against the real kernel: two node namespaces on an underlay
bridge whose ports carry 192 KiB GSO packets (tests/support/twonodes.py), pods made by
endpointd's Plumber. A pod's TCP packets of up to 192 KiB cross from_container, the underlay
and from_netdev whole; one too long for a VXLAN header goes through the kernel's VXLAN
device instead; a restart with the option off gives the pods back the kernel's 64 KiB."""
from __future__ import annotations

import contextlib
import subprocess
from dataclasses import replace

import pytest

from services.datapath import netns
from services.datapath.mtu import GSO_DEFAULT_SIZE, pod_gso_max
from services.datapath.netlink import BIG_TCP_SIZE, Netlink, ipv4_gso_sizes, set_ipv4_gso_max
from services.routed import netdev, tunnel
from services.runtime.clusterconfig import ClusterConfig
from services.runtime.config import NatsConfig
from services.wire.messages import PodSpec
from tests.support.bigtcp import IPERF_BYTES, big_packets_during
from tests.support.twonodes import TwoNodes, ping, pod_labels, until

ID_A, ID_B = 1001, 1002
IDENTITIES = {ID_A: pod_labels("default", {"app": "a"}), ID_B: pod_labels("default", {"app": "b"})}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with TwoNodes(tmp_path_factory.mktemp("bigtcp"), tunnel_mode=True, routes=True, big_tcp=True) as two:
        native = (two.a.add_pod("na", "10.77.1.10", ID_A, 11), two.b.add_pod("nb", "10.77.2.10", ID_B, 12))
        tunnelled = (two.a.add_pod("ta", "10.77.1.20", ID_A, 13), two.b.add_pod("tb", "10.77.2.20", ID_B, 14))
        for client, server in (native, tunnelled):
            node_ip = two.b.underlay_ip if client is tunnelled[0] else ""
            two.a.learn_remote(server, node_ip)
            two.b.learn_remote(client, two.a.underlay_ip if node_ip else "")
        for node in two.nodes:
            node.apply_policies([], IDENTITIES)
        yield two, native, tunnelled


def gso_sizes(where, ifname: str) -> int:
    with netns.entered(where), contextlib.closing(Netlink()) as nl:
        return ipv4_gso_sizes(nl.link(ifname).index)[0]


def veth_sizes(node, pod) -> tuple[int, int]:
    """(host side, pod side) IPv4 GSO size of POD's veth."""
    return gso_sizes(node.netns, pod.status.host_ifname), gso_sizes(pod.status.netns, "eth0")


def bulk(client, server, port: int, watch_node, watch_dev: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """An iperf3 transfer CLIENT -> SERVER, and CLIENT's packets over 64 KiB that tcpdump
    saw meanwhile on WATCH_DEV in WATCH_NODE's namespace (up to 3)."""
    return big_packets_during(["ip", "netns", "exec", watch_node.netns.name], watch_dev, client.ip,
                              server.popen("iperf3", "-s", "-1", "-p", str(port)),
                              lambda: client.run("iperf3", "-c", server.ip, "-p", str(port), "-n", IPERF_BYTES,
                                                 timeout=60))


def test_this_kernel_has_ipv4_big_tcp():
    assert pod_gso_max(True) == (BIG_TCP_SIZE, GSO_DEFAULT_SIZE, "")
    assert pod_gso_max(False) == (0, GSO_DEFAULT_SIZE, "")


def test_pods_send_192_kib_packets_through_bpf_host_routing(nodes):
    two, (na, nb), _ = nodes
    assert veth_sizes(two.a, na) == veth_sizes(two.b, nb) == (BIG_TCP_SIZE, BIG_TCP_SIZE)
    assert until(lambda: ping(na, nb.ip))
    result, seen = bulk(na, nb, 5301, two.b, "eth0")
    assert result.returncode == 0, result.stdout + result.stderr
    # on node b's underlay device, where from_netdev takes them: they crossed node a's
    # from_container and the wire whole
    assert len(seen) == 3, seen


def test_a_packet_too_long_for_a_vxlan_header_goes_through_the_device(nodes):
    """A tunnel-mode node refuses datapath.bigTCP; should a packet over 64 KiB reach the
    overlay anyway, from_container leaves it to the kernel's VXLAN device (whose GSO cuts it
    up) rather than write an outer length that cannot hold it."""
    two, _, (ta, tb) = nodes
    assert veth_sizes(two.a, ta)[1] == BIG_TCP_SIZE
    assert until(lambda: ping(ta, tb.ip))
    sent = int(two.a.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/tx_packets", check=True).stdout)
    result, seen = bulk(ta, tb, 5302, two.a, ta.status.host_ifname)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(seen) == 3, seen        # from_container saw them
    after = int(two.a.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/tx_packets", check=True).stdout)
    assert after > sent


def test_a_restart_without_big_tcp_takes_it_back(nodes):
    two, (na, _), _ = nodes
    plumber = two.a.plumber
    spec = PodSpec(name="na", namespace="default")
    status = replace(na.status, identity=na.identity)
    try:
        plumber.gso_max = pod_gso_max(False)[0]          # 0: the 64 KiB restored
        with two.a.entered():
            plumber.ensure(spec, status)
        assert veth_sizes(two.a, na) == (GSO_DEFAULT_SIZE, GSO_DEFAULT_SIZE)
    finally:
        plumber.gso_max = BIG_TCP_SIZE
        with two.a.entered():
            plumber.ensure(spec, status)
    assert veth_sizes(two.a, na) == (BIG_TCP_SIZE, BIG_TCP_SIZE)


def test_routed_lets_the_underlay_device_carry_them(nodes):
    two, _, _ = nodes
    config = replace(two.a.config, datapath=replace(two.a.config.datapath, bigTCP=True),
                     nats=NatsConfig(host="0.0.0.0"), cluster=ClusterConfig(name="lab", underlayIP=two.a.underlay_ip))
    with two.a.entered(), contextlib.closing(Netlink()) as nl:
        eth0 = nl.link("eth0").index
        set_ipv4_gso_max(eth0, GSO_DEFAULT_SIZE)
        assert netdev.big_tcp(nl, config) == ""
        assert ipv4_gso_sizes(eth0)[0] == BIG_TCP_SIZE
        # a device that cannot send them (a VXLAN device's TSO stops at 64 KiB) is named, and kept
        subprocess.run(["ip", "link", "add", "slow0", "type", "vxlan", "id", "7", "dstport", "4799"], check=True)
        try:
            subprocess.run(["ip", "addr", "add", "192.168.78.1/24", "dev", "slow0"], check=True)
            slow = replace(config, cluster=ClusterConfig(name="lab", underlayIP="192.168.78.1"))
            why = netdev.big_tcp(nl, slow)
            assert why.startswith("slow0 sends at most 65536-byte GSO packets"), why
            assert ipv4_gso_sizes(nl.link("slow0").index)[0] == GSO_DEFAULT_SIZE
        finally:
            subprocess.run(["ip", "link", "del", "slow0"], check=False)
