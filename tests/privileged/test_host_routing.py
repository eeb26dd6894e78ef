"""Native cluster routing against the real kernel: two node namespaces on an underlay bridge
(tests/support/twonodes.py), each pod CIDR routed via its node's underlay address, remote pods
learnt into each ipcache without a tunnel endpoint. With BPF host routing (the default)
from_container sends a packet for the other node's pod straight out of the underlay device
and the receiving node's from_netdev judges the pod's ingress policy and delivers it: neither
host stack forwards it. With datapath.hostLegacyRouting both host stacks forward it and
to_container judges it. Either way the same label policy decides, with the source identity
from the receiving node's ipcache."""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from services.datapath.maps.tunnel import FROM_NETDEV
from services.datapath.netlink import Netlink
from services.datapath.numbers import (DROP_POLICY_DENY, EVENT_DROP, EVENT_TRACE, METRIC_INGRESS, TRACE_FROM_NETWORK,
                                       TRACE_TO_LXC, TRACE_TO_NETWORK, TRACE_TO_STACK)
from services.routed import netdev, tunnel
from tests.support.twonodes import Events, TwoNodes, ping, pod_labels, until

ID_A, ID_B = 1001, 1002
IDENTITIES = {ID_A: pod_labels("default", {"app": "a"}), ID_B: pod_labels("default", {"app": "b"})}
ALLOW_A = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "allow-a", "namespace": "default"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}]}]}}
DENY_A = {**ALLOW_A, "metadata": {"name": "deny-a", "namespace": "default"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                   "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}]}]}}


@pytest.fixture(scope="module", params=["bpf", "legacy"])
def cluster(request, tmp_path_factory):
    legacy = request.param == "legacy"
    with TwoNodes(tmp_path_factory.mktemp("native"), tunnel_mode=False, routes=True, legacy=legacy) as two:
        pa = two.a.add_pod("pa", "10.77.1.10", ID_A, endpoint_id=11)
        pb = two.b.add_pod("pb", "10.77.2.10", ID_B, endpoint_id=12)
        two.a.learn_remote(pb, "")
        two.b.learn_remote(pa, "")
        two.a.apply_policies([], IDENTITIES)
        yield two, pa, pb, legacy


def forwarded(node) -> int:
    """Packets NODE's host stack forwarded (Ip ForwDatagrams)."""
    lines = [line.split() for line in node.run("cat", "/proc/net/snmp", check=True).stdout.splitlines()
             if line.startswith("Ip:")]
    return int(dict(zip(lines[0], lines[1]))["ForwDatagrams"])


def test_pods_on_two_nodes_reach_each_other_by_the_chosen_path(cluster):
    two, pa, pb, legacy = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip)), "pod a cannot reach pod b across nodes"
    before = [forwarded(n) for n in two.nodes]
    sent, got = Events(two.a), Events(two.b)
    try:
        assert ping(pa, pb.ip)
        out_point = TRACE_TO_STACK if legacy else TRACE_TO_NETWORK
        out = sent.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == out_point)
        assert (out.src_identity, out.dst_identity) == (ID_A, ID_B)
        in_point = TRACE_TO_LXC if legacy else TRACE_FROM_NETWORK
        into = got.wait_for(lambda e: e.type == EVENT_TRACE and e.subtype == in_point)
        assert (into.src_identity, into.dst_identity, into.direction) == (ID_A, ID_B, METRIC_INGRESS)
    finally:
        sent.close()
        got.close()
    after = [forwarded(n) for n in two.nodes]
    if legacy:
        assert all(a > b for a, b in zip(after, before)), (before, after)
        assert FROM_NETDEV not in two.b.run("tc", "filter", "show", "dev", "eth0", "ingress").stdout
    else:
        assert after == before, f"a host stack forwarded pod traffic: {before} -> {after}"


def test_bulk_tcp_takes_the_same_path(cluster):
    """A bulk transfer's packets are GSO bursts longer than the MTU: BPF host routing sends
    them too (the kernel checks them against the MTU segment by segment)."""
    two, pa, pb, legacy = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))
    server = pb.popen("iperf3", "-s", "-1", "-p", "5299")
    try:
        time.sleep(0.5)
        before = [forwarded(n) for n in two.nodes]
        client = pa.run("iperf3", "-c", pb.ip, "-p", "5299", "-n", "50M", timeout=60)
        after = [forwarded(n) for n in two.nodes]
    finally:
        server.kill()
        server.wait()
    assert client.returncode == 0, client.stdout + client.stderr
    if legacy:
        assert after[0] - before[0] > 1000, (before, after)
    else:
        assert after == before, f"a host stack forwarded the transfer: {before} -> {after}"


def test_a_label_policy_on_the_receiving_node_denies_the_remote_source(cluster):
    two, pa, pb, legacy = cluster
    two.b.apply_policies([DENY_A], IDENTITIES)
    got = Events(two.b)
    try:
        assert not ping(pa, pb.ip)
        drop = got.wait_for(lambda e: e.type == EVENT_DROP and e.subtype == DROP_POLICY_DENY)
        assert drop.src_identity == ID_A       # from node b's ipcache
        assert drop.dst_identity == ID_B and drop.endpoint_id == pb.endpoint_id
        where = "eth0" if not legacy else next(n for n in two.b.run("ls", "/sys/class/net").stdout.split()
                                               if n.startswith("lxc"))
        assert drop.ifindex == int(two.b.run("cat", f"/sys/class/net/{where}/ifindex", check=True).stdout)
    finally:
        got.close()
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))


def test_replies_and_the_reverse_direction_pass_the_senders_policy(cluster):
    two, pa, pb, _ = cluster
    two.b.apply_policies([ALLOW_A], IDENTITIES)
    two.a.apply_policies([DENY_A | {"spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
                                              "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "b"}}]}]}}],
                         IDENTITIES)
    try:
        assert until(lambda: ping(pa, pb.ip)), "replies to pod a's own connection were not let back in"
        assert not ping(pb, pa.ip), "pod a's deny of pod b did not hold"
    finally:
        two.a.apply_policies([], IDENTITIES)
    assert until(lambda: ping(pb, pa.ip))


def test_an_unresolved_next_hop_is_resolved_and_the_host_reaches_remote_pods(cluster):
    two, pa, pb, legacy = cluster
    two.b.apply_policies([], IDENTITIES)
    for node in two.nodes:
        node.run("ip", "neigh", "flush", "dev", "eth0", check=True)
    before = [forwarded(n) for n in two.nodes]
    assert ping(pa, pb.ip), "no path once the underlay neighbours were flushed"
    if not legacy:      # resolved by bpf_redirect_neigh, not by handing the packet to the stack
        assert [forwarded(n) for n in two.nodes] == before
        assert "lladdr" in two.a.run("ip", "neigh", "show", two.b.underlay_ip, check=True).stdout
    assert two.a.run("ping", "-c", "1", "-W", "3", pb.ip).returncode == 0, "node a's host cannot reach pod b"


def test_a_ttl_that_expires_on_the_way_is_answered_as_by_routers(cluster):
    two, pa, pb, _ = cluster
    two.b.apply_policies([], IDENTITIES)
    assert until(lambda: ping(pa, pb.ip))
    assert pa.run("ping", "-c", "1", "-W", "3", "-t", "3", pb.ip).returncode == 0
    expired = pa.run("ping", "-c", "1", "-W", "3", "-t", "2", pb.ip)
    assert expired.returncode != 0 and "Time to live exceeded" in expired.stdout, expired.stdout


def test_from_netdev_comes_off_the_device_and_the_host_stack_takes_over(cluster):
    two, pa, pb, legacy = cluster
    if legacy:
        pytest.skip("nothing attached with hostLegacyRouting")
    two.b.apply_policies([], IDENTITIES)
    with two.b.entered(), contextlib.closing(Netlink()) as nl:
        index = nl.link_of_address(two.b.underlay_ip).index
        assert netdev.detach(nl, index) and not netdev.detach(nl, index)     # gone is success
        assert FROM_NETDEV not in nl.bpf_filters(index)
    try:
        before = forwarded(two.b)
        assert until(lambda: ping(pa, pb.ip)), "node b's host stack does not deliver without from_netdev"
        assert forwarded(two.b) > before
    finally:
        fd = tunnel.pinned_program(two.b.config, FROM_NETDEV)      # as TwoNodes pinned it
        try:
            with two.b.entered(), contextlib.closing(Netlink()) as nl:
                netdev.attach(nl, nl.link_of_address(two.b.underlay_ip).index, fd)
        finally:
            os.close(fd)
