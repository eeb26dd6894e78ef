"""What the datapath must refuse, each shown with the real packet: a pod address with no
endpoint entry, ethertypes other than IPv4 and ARP, an echo request sent back the other way,
a host-set skb->mark, and a pod's address used as the source from outside the node.

Pods g/a, g/b, g/c: b accepts only from a; a accepts nothing. Each test gets a UDP sink in b
on its own port and proves delivery (or not) by the order in which the sink receives: what
was sent first and let through would arrive before the allowed control datagram from a."""
import itertools
import subprocess
from pathlib import Path

import pytest
import yaml

from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.metrics import MetricsMap
from services.datapath.numbers import (DROP_INVALID_SIP, DROP_POLICY, DROP_UNKNOWN_L3, DROP_UNKNOWN_TARGET,
                                       METRIC_EGRESS, METRIC_INGRESS)
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.packets import Sink, run
from tests.support.traffic import ping
from tests.support.wait import wait_for

MARK_POLICY_DONE = 0x0ca90000      # the mark to_container once trusted


def netpol(name: str, pod: str, ingress: list) -> str:
    return yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": "g"},
                           "spec": {"podSelector": {"matchLabels": {"app": pod}}, "policyTypes": ["Ingress"],
                                    "ingress": ingress}})


@pytest.fixture(scope="module")
def pods(node):
    node.apply(docs(namespace_doc("g"), pod_doc("g", "a"), pod_doc("g", "b"), pod_doc("g", "c")))
    node.apply(docs(netpol("b-from-a", "b", [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]),
                    netpol("a-closed", "a", [])))
    listed = node.pods()
    return {ref.split("/")[1]: {"ip": p["status"]["podIP"], "netns": p["spec"]["netns"],
                                "lxc": p["status"]["hostInterface"]}
            for ref, p in listed.items() if ref.startswith("g/")}


PORTS = itertools.count(9100)


@pytest.fixture
def sink(pods):
    s = Sink(pods["b"]["netns"], next(PORTS))
    yield s
    s.close()


def drops(node, direction: int, reason: int) -> int:
    return MetricsMap(Path(node.bpf_root)).read(direction, reason).packets



def control(pods, sink) -> None:
    """Send a datagram b accepts (from a) and check it is the next the sink got: nothing
    sent before it was let through."""
    run(pods["a"]["netns"], "send", pods["b"]["ip"], str(sink.port), "control")
    assert sink.next_line() == f"{pods['a']['ip']} control"


def test_a_pod_address_without_an_endpoint_entry_gets_nothing(node, pods, sink):
    """Between a pod's endpoint entry going and its link going (pod deletion), or after an
    edit of the map, traffic to it met no policy: pod c and the host reached b one way."""
    endpoints = EndpointMap(Path(node.bpf_root))
    entry = endpoints.get(pods["b"]["ip"])
    before = (drops(node, METRIC_EGRESS, DROP_UNKNOWN_TARGET), drops(node, METRIC_INGRESS, DROP_UNKNOWN_TARGET))
    endpoints.delete(pods["b"]["ip"])
    try:
        run(pods["c"]["netns"], "send", pods["b"]["ip"], str(sink.port), "from-c")
        run(None, "send", pods["b"]["ip"], str(sink.port), "from-host")
        assert not ping(pods["c"]["netns"], pods["b"]["ip"])
    finally:
        endpoints.upsert(entry)
    control(pods, sink)
    assert drops(node, METRIC_EGRESS, DROP_UNKNOWN_TARGET) >= before[0] + 2
    assert drops(node, METRIC_INGRESS, DROP_UNKNOWN_TARGET) >= before[1] + 1


def test_an_unused_pod_address_is_an_unknown_target(node, pods):
    unused = pods["b"]["ip"].rsplit(".", 1)[0] + ".250"
    before = drops(node, METRIC_EGRESS, DROP_UNKNOWN_TARGET)
    assert not ping(pods["a"]["netns"], unused)
    wait_for(lambda: drops(node, METRIC_EGRESS, DROP_UNKNOWN_TARGET) > before, "the ping dropped")
    assert ping(pods["a"]["netns"], node.router_ip)          # the router is in the CIDR, and answers


def _ip(netns: str | None, *args: str) -> None:
    argv = ["ip", *args] if netns is None else ["nsenter", f"--net={netns}", "ip", *args]
    subprocess.run(argv, check=True, capture_output=True)


def _sysctl(netns: str | None, key: str, value: str) -> None:
    argv = ["sysctl", "-qw", f"{key}={value}"]
    subprocess.run(argv if netns is None else ["nsenter", f"--net={netns}", *argv], check=True)


def test_ipv6_is_dropped_both_ways(node, pods):
    """A pod that turns IPv6 on reached the host over link-local IPv6 whatever the policy
    said, as soon as the host side had an IPv6 address."""
    a, lxc = pods["a"]["netns"], pods["a"]["lxc"]
    before = (drops(node, METRIC_EGRESS, DROP_UNKNOWN_L3), drops(node, METRIC_INGRESS, DROP_UNKNOWN_L3))
    _sysctl(a, "net.ipv6.conf.eth0.disable_ipv6", "0")
    _ip(a, "-6", "addr", "add", "fe80::a/64", "dev", "eth0", "nodad")
    _sysctl(None, f"net.ipv6.conf.{lxc}.disable_ipv6", "0")
    try:
        _ip(None, "-6", "addr", "add", "fe80::1/64", "dev", lxc, "nodad")
        out = subprocess.run(["nsenter", f"--net={a}", "ping", "-6", "-c", "2", "-W", "1", "fe80::1%eth0"],
                             capture_output=True, text=True)
        assert out.returncode != 0, out.stdout
        back = subprocess.run(["ping", "-6", "-c", "1", "-W", "1", f"fe80::a%{lxc}"], capture_output=True)
        assert back.returncode != 0
        wait_for(lambda: drops(node, METRIC_EGRESS, DROP_UNKNOWN_L3) > before[0], "the pod's IPv6 dropped")
        wait_for(lambda: drops(node, METRIC_INGRESS, DROP_UNKNOWN_L3) > before[1], "the host's IPv6 dropped")
    finally:
        _sysctl(None, f"net.ipv6.conf.{lxc}.disable_ipv6", "1")
        _sysctl(a, "net.ipv6.conf.eth0.disable_ipv6", "1")
    assert ping(a, pods["b"]["ip"])                          # IPv4 unaffected


def test_pods_get_no_ipv6(node, pods):
    out = subprocess.run(["nsenter", f"--net={pods['c']['netns']}", "sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def _echo(netns: str, dst: str, ident: int) -> bool:
    argv = ["nsenter", f"--net={netns}", "ping", "-c", "1", "-W", "1", "-e", str(ident), dst]
    return subprocess.run(argv, capture_output=True).returncode == 0


def test_an_echo_request_sent_back_is_not_a_reply(node, pods):
    """a accepts nothing, but its pings to b are answered (replies). b's own echo request to
    a with the identifier of a's ping matched a's entry as a reply, and a answered it."""
    ident = 4242
    assert _echo(pods["a"]["netns"], pods["b"]["ip"], ident)
    before = drops(node, METRIC_INGRESS, DROP_POLICY)
    assert not _echo(pods["b"]["netns"], pods["a"]["ip"], ident)
    wait_for(lambda: drops(node, METRIC_INGRESS, DROP_POLICY) > before, "b's request met a's policy")
    assert _echo(pods["a"]["netns"], pods["b"]["ip"], ident)     # a's own pings still answered


def test_a_host_set_mark_does_not_skip_ingress_policy(node, pods, sink):
    """to_container skipped policy for any packet with skb->mark 0x0ca90000: the host set it
    (SO_MARK) and reached b, which accepts only a."""
    before = drops(node, METRIC_INGRESS, DROP_POLICY)
    run(None, "send", pods["b"]["ip"], str(sink.port), "marked", "--mark", hex(MARK_POLICY_DONE))
    control(pods, sink)
    assert drops(node, METRIC_INGRESS, DROP_POLICY) > before


@pytest.fixture
def outside(node):
    """A host on the node's L2 segment: a netns behind a veth, routed to the pod CIDR."""
    name, dev = f"out-{node.tag}", f"o{node.tag}h"
    a, b = int(node.tag[:2], 16), int(node.tag[2:], 16) & 0xFC
    host_ip, its_ip = f"198.18.{a}.{b + 1}", f"198.18.{a}.{b + 2}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(None, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip(None, "addr", "add", f"{host_ip}/30", "dev", dev)
        _sysctl(None, f"net.ipv4.conf.{dev}.rp_filter", "0")     # not capillary's device
        _ip(None, "link", "set", dev, "up")
        ns = f"/run/netns/{name}"
        _ip(ns, "addr", "add", f"{its_ip}/30", "dev", "eth0")
        _ip(ns, "link", "set", "eth0", "up")
        _ip(ns, "route", "add", node.pod_cidr, "via", host_ip)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_pod_address_from_outside_is_not_that_pod(node, pods, sink, outside):
    """to_container took the source's identity from the ipcache: a host on the segment
    sending with a's address was let into b as a."""
    _ip(outside, "addr", "add", f"{pods['a']['ip']}/32", "dev", "eth0")
    before = drops(node, METRIC_INGRESS, DROP_INVALID_SIP)
    run(outside, "send", pods["b"]["ip"], str(sink.port), "spoofed", "--src", pods["a"]["ip"])
    control(pods, sink)
    assert drops(node, METRIC_INGRESS, DROP_INVALID_SIP) > before


def test_capillary_devices_filter_reverse_paths(node, pods):
    for dev in (pods["a"]["lxc"], node.router_device, f"ct{node.tag}n"):
        assert Path(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter").read_text().strip() == "1", dev


def test_host_stack_mode_judges_each_packet_once_and_trusts_no_mark(host_stack_node):
    """In host-stack mode pod-to-pod packets reach to_container through the kernel: the
    connection from_container allowed is delivered, one it refused never gets there, and
    a host-set mark is no pass."""
    n = host_stack_node
    n.apply(docs(namespace_doc("g"), pod_doc("g", "a"), pod_doc("g", "b"), pod_doc("g", "c")))
    n.apply(netpol("b-from-a", "b", [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]))
    hs = {p: {"ip": n.pod_ip(f"g/{p}"), "netns": n.netns(f"g/{p}")} for p in ("a", "b", "c")}
    s = Sink(hs["b"]["netns"], next(PORTS))
    try:
        before = drops(n, METRIC_INGRESS, DROP_POLICY) + drops(n, METRIC_EGRESS, DROP_POLICY)
        run(hs["c"]["netns"], "send", hs["b"]["ip"], str(s.port), "from-c")
        run(None, "send", hs["b"]["ip"], str(s.port), "marked", "--mark", hex(MARK_POLICY_DONE))
        for i in range(3):                    # new, then established, through the kernel
            run(hs["a"]["netns"], "send", hs["b"]["ip"], str(s.port), f"from-a-{i}", "--sport", "41000")
            assert s.next_line() == f"{hs['a']['ip']} from-a-{i}"
        assert drops(n, METRIC_INGRESS, DROP_POLICY) + drops(n, METRIC_EGRESS, DROP_POLICY) >= before + 2
    finally:
        s.close()
