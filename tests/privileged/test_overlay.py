"""Tunnel mode against the real kernel: two node namespaces on an underlay bridge, capillary's
datapath in each (tests/support/twonodes.py), a pod on each, remote pods learnt into each
ipcache with their node's underlay address. Pod a reaches pod b through VXLAN, with the
source identity carried in the VNI, and pod b's label policy decides on it. The VXLAN headers
are written and taken off in BPF (from_container, from_netdev); the kernel's VXLAN devices
carry what BPF leaves to them, and each side reads what the other wrote. The overlay's
packets are exempt from the hosts' connection tracking while the device is there."""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import time

import pytest

from services.datapath.netlink import Netlink
from services.datapath.numbers import (DROP_NO_TUNNEL_ENDPOINT, DROP_POLICY_DENY, DROP_UNKNOWN_SENDER, EVENT_DROP, EVENT_TRACE, METRIC_INGRESS,
                                       TRACE_FROM_OVERLAY, TRACE_TO_OVERLAY)
from services.datapath.maps.tunnel import FROM_NETDEV
from services.routed import iptables, netdev, tunnel
from tests.support.twonodes import UNDERLAY_MTU, Events, TwoNodes, ping, pod_labels, until

ID_A, ID_B = 1001, 1002
IDENTITIES = {ID_A: pod_labels("default", {"app": "a"}), ID_B: pod_labels("default", {"app": "b"})}


def cnp(name: str, spec: dict) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "b"}}, **spec}}


SO_NO_CHECK = 11          # asm-generic/socket.h: send UDP without a checksum
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


def device_packets(node, way: str) -> int:
    """Packets NODE's VXLAN device has received ("rx") or sent ("tx")."""
    return int(node.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/{way}_packets", check=True).stdout)


@contextlib.contextmanager
def kernel_send(node, pod):
    """POD's packets to other nodes go to NODE's VXLAN device: with forwarding off on the
    pod's host device, the FIB lookup of from_container's own encapsulation is refused."""
    knob = f"net.ipv4.conf.{pod.status.host_ifname}.forwarding"
    node.run("sysctl", "-qw", f"{knob}=0", check=True)
    try:
        yield
    finally:
        node.run("sysctl", "-qw", f"{knob}=1", check=True)


@contextlib.contextmanager
def kernel_receive(node):
    """NODE's VXLAN device receives the overlay: from_netdev off the underlay device."""
    with node.entered(), contextlib.closing(Netlink()) as nl:
        index = nl.link_of_address(node.underlay_ip).index
        assert netdev.detach(nl, index), "from_netdev was not on the underlay device"
    try:
        yield
    finally:
        with node.entered(), contextlib.closing(Netlink()) as nl:
            fd = tunnel.pinned_program(node.config, FROM_NETDEV)
            try:
                netdev.attach(nl, index, fd)
            finally:
                os.close(fd)


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
    for node in two.nodes:
        details = node.run("ip", "-d", "link", "show", tunnel.DEVICE, check=True).stdout
        assert "vxlan external" in details and f"dstport {tunnel.PORT}" in details
    # No route between the pod CIDRs exists in tunnel mode: it went through the overlay.
    assert "10.77.1." not in two.b.run("ip", "route", check=True).stdout


def test_bpf_writes_and_takes_off_the_vxlan_headers(cluster):
    """With both nodes' neighbours resolved, neither VXLAN device carries a packet: the
    headers on the wire (VNI: the source identity) are from_container's, and from_netdev
    takes them off."""
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))
    before = [device_packets(node, way) for node in two.nodes for way in ("rx", "tx")]
    wire = subprocess.Popen(["ip", "netns", "exec", two.underlay.name, "timeout", "20", "tcpdump", "-i", "br0",
                             "-nn", "-l", "-c", "2", "-T", "vxlan", f"udp dst port {tunnel.PORT}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)                       # tcpdump is listening
        for _ in range(3):
            assert ping(pa, pb.ip)
        seen = wire.communicate(timeout=30)[0]
    finally:
        wire.kill()
    assert f"vni {ID_A}" in seen and f"{pa.ip} > {pb.ip}: ICMP echo request" in seen, seen
    assert f"vni {ID_B}" in seen and f"{pb.ip} > {pa.ip}: ICMP echo reply" in seen, seen
    assert [device_packets(node, way) for node in two.nodes for way in ("rx", "tx")] == before


@pytest.mark.parametrize("send, receive", [("kernel", "kernel"), ("kernel", "bpf"), ("bpf", "kernel")])
def test_the_kernel_vxlan_device_carries_what_bpf_leaves(cluster, send, receive):
    """Either side may be the kernel's VXLAN device: each reads the other's headers, and the
    receiving pod's policy judges the identity from the VNI either way."""
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))
    with contextlib.ExitStack() as stack:
        if send == "kernel":
            stack.enter_context(kernel_send(two.a, pa))
        if receive == "kernel":
            stack.enter_context(kernel_receive(two.b))
        tx, rx = device_packets(two.a, "tx"), device_packets(two.b, "rx")
        got = stack.enter_context(contextlib.closing(Events(two.b)))
        assert until(lambda: ping(pa, pb.ip)), f"no way across with {send} sending, {receive} receiving"
        into = got.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == TRACE_FROM_OVERLAY)
        assert (into.src_identity, into.dst_identity) == (ID_A, ID_B)
        assert (device_packets(two.a, "tx") > tx) == (send == "kernel")
        assert (device_packets(two.b, "rx") > rx) == (receive == "kernel")
        two.b.apply_policies([DENY_A], IDENTITIES)
        try:
            assert not ping(pa, pb.ip)
        finally:
            two.b.apply_policies([ALLOW_A], IDENTITIES)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of DATA."""
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan_echo(src: str, dst: str, vni: int, ident: int, tos: int = 0) -> bytes:
    """A VXLAN payload (RFC 7348) carrying an ICMP echo request from SRC to DST."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"capillary"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), ident, 0, 64, 1, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    inner_eth = bytes.fromhex("02000000000102000000000208 00".replace(" ", ""))
    return struct.pack("!II", 0x08000000, vni << 8) + inner_eth + ip + icmp


def send_vxlan(two, pa, pb, checksum: bool = False, ecn_ce: bool = False, source: str = "") -> None:
    """From node a's host (from SOURCE, one of its addresses, if given), a VXLAN packet to
    node b carrying an ICMP echo from pod a to pod b with pod a's identity as the VNI; its
    outer UDP checksum computed when CHECKSUM, a congestion mark on the outer header when
    ECN_CE (carried over only to an ECN-capable inner packet: that one is ECT(0))."""
    with two.a.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.closing(sock):
        if not checksum:
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        if ecn_ce:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 3)
        if source:
            sock.bind((source, 0))
        payload = vxlan_echo(pa.ip, pb.ip, ID_A, secrets.randbelow(0xFFFF) + 1, tos=2 if ecn_ce else 0)
        sock.sendto(payload, (two.b.underlay_ip, tunnel.PORT))


@pytest.mark.parametrize("outer, taken_by", [("plain", "bpf"), ("udp checksum", "kernel"), ("ecn ce", "kernel")])
def test_from_netdev_leaves_to_the_kernel_what_it_must_check(cluster, outer, taken_by):
    """VXLAN sent from node a's host by hand: from_netdev takes the headers off a plain one
    (zero UDP checksum, as VXLAN senders send it), and leaves one with a UDP checksum to
    verify or a congestion mark to carry over to the kernel's device; either way pod b's
    policy judges the identity from the VNI."""
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    with two.b.entered(), contextlib.closing(Netlink()) as nl:
        where = nl.link(tunnel.DEVICE).index if taken_by == "kernel" else nl.link_of_address(two.b.underlay_ip).index
    received = device_packets(two.b, "rx")
    got = Events(two.b)
    try:
        send_vxlan(two, pa, pb, checksum=outer == "udp checksum", ecn_ce=outer == "ecn ce")
        into = got.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == TRACE_FROM_OVERLAY)
    finally:
        got.close()
    assert (into.src_identity, into.dst_identity, into.ifindex) == (ID_A, ID_B, where)
    assert (device_packets(two.b, "rx") > received) == (taken_by == "kernel")


def test_vxlan_from_an_address_that_is_no_node_is_dropped(cluster):
    """A host on the underlay that is not a node of the cluster sends pod b a VXLAN packet
    that names pod a's identity (allowed in) as its VNI: from_netdev leaves it to the
    kernel's device, and from_overlay drops it (Unknown sender) instead of believing the VNI."""
    two, pa, pb = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    stranger = "192.168.77.99"
    two.a.run("ip", "addr", "add", f"{stranger}/24", "dev", "eth0", check=True)
    received = device_packets(two.b, "rx")
    got = Events(two.b)
    try:
        send_vxlan(two, pa, pb, source=stranger)
        drop = got.wait_for(lambda e: e.type == EVENT_DROP and e.subtype == DROP_UNKNOWN_SENDER)
    finally:
        got.close()
        two.a.run("ip", "addr", "del", f"{stranger}/24", "dev", "eth0")
    assert drop.src_identity != ID_A and drop.direction == METRIC_INGRESS
    assert device_packets(two.b, "rx") > received          # from_netdev left it to the device
    assert until(lambda: ping(pa, pb.ip))                  # node a itself is still believed


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
        # The kernel's VXLAN devices both ways: BPF's own way passes no netfilter hook.
        with kernel_send(two.a, pa), kernel_send(two.b, pb), kernel_receive(two.a), kernel_receive(two.b):
            sent = [device_packets(node, "tx") for node in two.nodes]
            assert until(lambda: ping(pa, pb.ip)), "pod a cannot reach pod b across nodes"
            assert all(device_packets(node, "tx") > n for node, n in zip(two.nodes, sent))
        assert two.a.run("ping", "-c", "1", "-W", "3", two.b.underlay_ip).returncode == 0
        assert tracked(two.a, "icmp"), "conntrack is not on in node a's namespace"
        for node in two.nodes:
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
