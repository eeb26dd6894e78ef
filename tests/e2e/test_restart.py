"""Restart safety: pods, IPs and connectivity survive service crashes and node restarts,
and a ping running through them loses nothing."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import PROBER, Servers, ping


@pytest.fixture(scope="module")
def two_pods(node):
    node.apply(docs(namespace_doc("r"), pod_doc("r", "a"), pod_doc("r", "b")))
    return node.pods()


class Pinger:
    """ping -i 0.02 from one pod to another for the whole `with` block; reports loss."""

    def __init__(self, netns: str, ip: str) -> None:
        self.argv = ["nsenter", f"--net={netns}", "--", "ping", "-i", "0.02", "-W", "1", ip]

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        self.sent, self.received = int(m.group(1)), int(m.group(2))


def _kill_and_wait(node, service: str) -> None:
    pid = node.service_pid(service)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        st = node.status()
        svc = st["services"][service]
        if svc["healthy"] and svc.get("pid") not in (None, pid):
            return
        time.sleep(0.2)
    raise AssertionError(f"{service} did not come back: {st['services'][service]}")


def test_kill9_of_endpointd_and_routed_loses_no_packet(node, two_pods):
    a, b = two_pods["r/a"], two_pods["r/b"]
    with Pinger(a["spec"]["netns"], b["status"]["podIP"]) as p:
        _kill_and_wait(node, "endpointd")
        _kill_and_wait(node, "routed")
    assert p.sent > 50 and p.received == p.sent, f"{p.sent} sent, {p.received} received"
    after = node.pods()
    for ref in ("r/a", "r/b"):
        assert after[ref]["status"] == two_pods[ref]["status"]


def test_policyd_restart_keeps_identities(node, two_pods):
    before = node.cli("get", "identities", "-o", "json").stdout
    _kill_and_wait(node, "policyd")
    assert node.cli("get", "identities", "-o", "json").stdout == before


def test_down_then_up_keeps_pods_ips_and_connectivity(node, two_pods):
    a, b = two_pods["r/a"], two_pods["r/b"]
    with Pinger(a["spec"]["netns"], b["status"]["podIP"]) as p:
        node.down()
        assert ping(a["spec"]["netns"], b["status"]["podIP"])     # the datapath outlives the node
        node.up()
    assert p.received == p.sent, f"{p.sent} sent, {p.received} received"
    after = node.pods()
    for ref in ("r/a", "r/b"):
        assert after[ref]["status"]["podIP"] == two_pods[ref]["status"]["podIP"]
        assert after[ref]["status"]["identity"] == two_pods[ref]["status"]["identity"]
    assert ping(b["spec"]["netns"], a["status"]["podIP"])


def test_orphans_from_a_crash_are_removed_at_start(node, two_pods):
    # A veth and netns that no pod record owns, as a crash mid-create would leave.
    orphan_ns = f"cap-{node.name}_r.ghost"
    subprocess.run(["ip", "netns", "add", orphan_ns], check=True)
    ghost = (node.lxc_prefix + "0123456789abcdef")[:15]
    subprocess.run(["ip", "link", "add", ghost, "type", "veth", "peer", "name", "eth0",
                    "netns", orphan_ns], check=True)
    _kill_and_wait(node, "endpointd")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert ghost not in links
    assert orphan_ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert set(node.pods()) >= {"r/a", "r/b"}


def test_policy_is_enforced_without_a_gap_through_restarts(node):
    """A denied port stays denied, connection after connection, through `down` + `up` and a
    kill -9 of policyd and of endpointd; the allowed port keeps working."""
    node.apply(docs(namespace_doc("rp"), pod_doc("rp", "a", {"app": "a"}), pod_doc("rp", "b", {"app": "b"})))
    node.apply(yaml.safe_dump({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "b-80", "namespace": "rp"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}))
    servers = Servers()
    b_ip = node.pod_ip("rp/b")
    try:
        servers.start(node.netns("rp/b"), 80, 81)
        targets = json.dumps([["tcp", b_ip, 80], ["tcp", b_ip, 81]])
        prober = subprocess.Popen(["nsenter", f"--net={node.netns('rp/a')}", "--", sys.executable, PROBER, "loop",
                                   "40", targets], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        node.down()
        node.up()
        _kill_and_wait(node, "policyd")
        _kill_and_wait(node, "endpointd")
        out, _ = prober.communicate(timeout=120)
        assert prober.returncode == 0, "the prober could not run (see its stderr)"
        counts = json.loads(out)
        allowed, denied = counts[f"tcp {b_ip} 80"], counts[f"tcp {b_ip} 81"]
        assert denied[0] == 0 and denied[1] > 10, f"port 81 let through {denied[0]} of {sum(denied)} connections"
        assert allowed[0] > 100 and allowed[1] == 0, f"port 80: {allowed[0]} ok, {allowed[1]} failed"
    finally:
        servers.close()
        node.cli("delete", "cnp", "b-80", "-n", "rp")
        node.cli("delete", "namespace", "rp")
