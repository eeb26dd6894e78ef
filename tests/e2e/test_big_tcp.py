"""A node with datapath.bigTCP: endpointd gives both ends of a pod's veth the 192 KiB IPv4
GSO size, a pod's 192 KiB TCP packets reach the pod beside it whole, and a restart with
the option off gives the pods it kept the kernel's 64 KiB back."""
import contextlib
import subprocess

import pytest
import yaml

from services.datapath import netns
from services.datapath.mtu import GSO_DEFAULT_SIZE
from services.datapath.netlink import BIG_TCP_SIZE, Netlink, PodNetlink, ipv4_gso_sizes
from tests.support.bigtcp import IPERF_BYTES, big_packets_during
from tests.support.node import docs, namespace_doc, pod_doc


@pytest.fixture(scope="module")
def node(big_tcp_node):
    return big_tcp_node


def sizes(node, ref: str) -> tuple[int, int]:
    """(host side, pod side) IPv4 GSO size of the pod REF's veth."""
    pod = node.pods()[ref]
    with contextlib.closing(Netlink()) as nl:
        host = ipv4_gso_sizes(nl.link(pod["status"]["hostInterface"]).index)[0]
    with PodNetlink(pod["spec"]["netns"]) as nl, netns.entered(pod["spec"]["netns"]):
        inside = ipv4_gso_sizes(nl.link("eth0").index)[0]
    return host, inside


def big_packets(node, client: str, server: str, port: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    """An iperf3 transfer CLIENT -> SERVER (pod refs), and CLIENT's packets over 64 KiB that
    tcpdump saw meanwhile on its host veth (up to 3)."""
    pods = node.pods()
    listener = subprocess.Popen(["nsenter", f"--net={pods[server]['spec']['netns']}", "--",
                                 "iperf3", "-s", "-1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return big_packets_during([], pods[client]["status"]["hostInterface"], pods[client]["status"]["podIP"], listener,
                              lambda: node.run_in(client, "iperf3", "-c", pods[server]["status"]["podIP"], "-p",
                                                  str(port), "-n", IPERF_BYTES, timeout=60))


def test_pods_carry_big_tcp_packets_and_a_restart_without_it_takes_it_back(node):
    node.apply(docs(namespace_doc("big"), pod_doc("big", "a"), pod_doc("big", "b")))
    assert sizes(node, "big/a") == sizes(node, "big/b") == (BIG_TCP_SIZE, BIG_TCP_SIZE)
    result, seen = big_packets(node, "big/a", "big/b", 5311)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(seen) == 3, seen

    node.down()
    config = yaml.safe_load(node.config_path.read_text())
    config["datapath"]["bigTCP"] = False
    node.config_path.write_text(yaml.safe_dump(config))
    node.up()
    node.wait_healthy()
    assert sizes(node, "big/a") == sizes(node, "big/b") == (GSO_DEFAULT_SIZE, GSO_DEFAULT_SIZE)
    result, seen = big_packets(node, "big/a", "big/b", 5312)
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen == [], seen
