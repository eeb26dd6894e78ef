"""Tunnel mode against the real kernel: two node namespaces on an underlay bridge, capillary's
datapath in each (tests/support/twonodes.py), a pod on each, remote pods learnt into each
ipcache with their node's underlay address. Pod a reaches pod b through VXLAN, with the
source identity carried in the VNI, and pod b's label policy decides on it. The overlay's
packets are exempt from the hosts' connection tracking while the device is there."""
from __future__ import annotations

import contextlib

import pytest

from services.datapath.netlink import Netlink
from services.datapath.numbers import (DROP_NO_TUNNEL_ENDPOINT, DROP_POLICY_DENY, EVENT_DROP, EVENT_TRACE, METRIC_INGRESS,
                                       TRACE_FROM_OVERLAY, TRACE_TO_OVERLAY)
from services.routed import iptables, tunnel
from tests.support.twonodes import UNDERLAY_MTU, Events, TwoNodes, ping, pod_labels, until

ID_A, ID_B = 1001, 1002
IDENTITIES = {ID_A: pod_labels("default", {"app": "a"}), ID_B: pod_labels("default", {"app": "b"})}


def cnp(name: str, spec: dict) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "b"}}, **spec}}


ALLOW_A = cnp("allow-a", {"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}]}]})
DENY_A = cnp("deny-a", {"ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}]}]})


# Turns conntrack on in a node namespace, as masquerade or a container engine's rules do; it
# matches nothing of the tests' traffic.
CONNTRACK_ON = ["-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-j", "MASQUERADE"]
NOTRACK_RULES = [f"-A {parent} -j {iptables.NOTRACK_CHAIN}" for parent in iptables.NOTRACK_PARENTS] + [
    f"-A {iptables.NOTRACK_CHAIN} -p udp -m udp --dport {tunnel.PORT} "
    '-m comment --comment "capillary: overlay traffic is not tracked" -j CT --notrack']


def capillary_raw_rules(node) -> list[str]:
    """The raw table's rules of capillary's in NODE's namespace, as `iptables -S` prints them."""
    out = node.run("iptables", "-w", "-t", "raw", "-S", check=True).stdout
    return sorted(line for line in out.splitlines() if iptables.NOTRACK_CHAIN in line and line.startswith("-A"))


def tracked(node, proto: str) -> list[str]:
    """NODE's conntrack entries of protocol PROTO."""
    entries = node.run("cat", "/proc/net/nf_conntrack", check=True).stdout.splitlines()
    return [line for line in entries if f" {proto} " in line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with TwoNodes(tmp_path_factory.mktemp("overlay"), tunnel_mode=True) as two:
        pa = two.a.add_pod("pa", "10.77.1.10", ID_A, endpoint_id=11)
        pb = two.b.add_pod("pb", "10.77.2.10", ID_B, endpoint_id=12)
        two.a.learn_remote(pb, two.b.underlay_ip)
        two.b.learn_remote(pa, two.a.underlay_ip)
        # Node a has no policy: its pod may send anywhere (an endpoint no policy state was
        # written for yet has its packets dropped). Each test then sets node b's policies.
        two.a.apply_policies([], IDENTITIES)
        yield two, pa, pb


def test_pod_reaches_a_pod_on_another_node_through_vxlan(cluster):
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    two.a.apply_policies([], IDENTITIES)
    sent, got = Events(two.a), Events(two.b)
    try:
        assert until(lambda: ping(pa, pb.ip)), "pod a cannot reach pod b across nodes"
        out = sent.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == TRACE_TO_OVERLAY)
        assert out.src_identity == ID_A and out.dst_identity == ID_B
        into = got.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == TRACE_FROM_OVERLAY)
        assert (into.src_identity, into.dst_identity, into.direction) == (ID_A, ID_B, METRIC_INGRESS)
    finally:
        sent.close()
        got.close()
    # It went through the VXLAN devices: no route between the pod CIDRs exists in tunnel mode.
    for node in two.nodes:
        details = node.run("ip", "-d", "link", "show", tunnel.DEVICE, check=True).stdout
        assert "vxlan external" in details and f"dstport {tunnel.PORT}" in details
        for way in ("rx", "tx"):
            stat = node.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/{way}_packets", check=True)
            assert int(stat.stdout) > 0, (node.name, way)
    assert "10.77.1." not in two.b.run("ip", "route", check=True).stdout


def test_pod_mtu_leaves_room_for_the_encapsulation(cluster):
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    mtu = int(pa.run("cat", "/sys/class/net/eth0/mtu", check=True).stdout)
    assert mtu == UNDERLAY_MTU - tunnel.OVERHEAD      # tunnel.pod_mtu_on the node's underlay link
    assert until(lambda: ping(pa, pb.ip, size=mtu - 28)), "a full-size packet (DF) does not cross"
    assert not ping(pa, pb.ip, size=mtu - 27), "the pod sent more than its MTU"


def test_a_label_policy_denying_the_source_identity_drops_with_it(cluster):
    two, pa, pb = cluster
    two.b.apply_policies([DENY_A], IDENTITIES)
    got = Events(two.b)
    try:
        assert not ping(pa, pb.ip)
        drop = got.wait_for(lambda e: e.type == EVENT_DROP and e.subtype == DROP_POLICY_DENY)
        assert drop.src_identity == ID_A       # from the VNI: node b has no endpoint for pod a
        assert drop.dst_identity == ID_B and drop.endpoint_id == pb.endpoint_id
    finally:
        got.close()
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))


def test_the_hosts_do_not_track_the_overlay(cluster):
    """With conntrack on in both node namespaces, the encapsulated packets make no entry on
    either node (the rule tunnel.ensure_device installs, once however often it runs), while
    the hosts' own traffic is tracked."""
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    two.a.apply_policies([], IDENTITIES)
    with two.a.entered(), contextlib.closing(Netlink()) as nl:
        tunnel.ensure(nl, two.a.config)              # a second time: still one rule
    for node in two.nodes:
        node.run("iptables", "-w", *CONNTRACK_ON, check=True)
    try:
        for node in two.nodes:
            assert capillary_raw_rules(node) == sorted(NOTRACK_RULES), node.name
        assert until(lambda: ping(pa, pb.ip)), "pod a cannot reach pod b across nodes"
        assert two.a.run("ping", "-c", "1", "-W", "3", two.b.underlay_ip).returncode == 0
        assert tracked(two.a, "icmp"), "conntrack is not on in node a's namespace"
        for node in two.nodes:
            assert int(node.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/tx_packets").stdout) > 0
            assert tracked(node, "udp") == [], f"node {node.name} tracked the overlay"
    finally:
        for node in two.nodes:
            node.run("iptables", "-w", *[a if a != "-A" else "-D" for a in CONNTRACK_ON])


def test_without_the_device_nothing_is_sent_in_the_clear(cluster):
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    sent = Events(two.a)
    with two.a.entered(), contextlib.closing(Netlink()) as nl:
        tunnel.remove_device(nl, two.a.config)
    try:
        assert capillary_raw_rules(two.a) == [], "the no-track rule outlived the device"
        assert not ping(pa, pb.ip)
        drop = sent.wait_for(lambda e: e.type == EVENT_DROP and e.subtype == DROP_NO_TUNNEL_ENDPOINT)
        assert (drop.src_identity, drop.endpoint_id) == (ID_A, pa.endpoint_id)
    finally:
        sent.close()
        with two.a.entered(), contextlib.closing(Netlink()) as nl:
            tunnel.ensure(nl, two.a.config)        # from_overlay as endpointd pinned it
    assert until(lambda: ping(pa, pb.ip))
    assert capillary_raw_rules(two.a) == sorted(NOTRACK_RULES)
