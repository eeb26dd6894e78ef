"""Disruptions of a running node, and steady traffic to measure what they break.

Each disruption returns once the node is healthy again. Steady runs tests/support/steady.py
in a client pod (long-lived TCP echo connections, a 50 pps ping, a loop of connects to a
denied port) and reads its counts. `scene` and `run` set up and measure the same thing on
anything that applies manifests and lists pods: an embedded node or a compose deployment."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.node import Node, docs, namespace_doc, pod_doc
from tests.support.traffic import Servers

STEADY = str(Path(__file__).with_name("steady.py"))
SETTLE = 7.0            # seconds of traffic after the node is healthy again: more than the
                        # 5 s reply timeout, so a connection the disruption broke is counted
RESTART_TIMEOUT = 60.0

NS = "dis"
ECHO_PORT, DENIED_PORT = 7000, 7001
# Both directions are under policy: the client's ingress allows only a third pod, so the
# server's replies pass only as replies its connection tracking knows; the server's ingress
# allows the client but denies it the denied port.
POLICIES = [
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "server", "namespace": NS},
     "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
              "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
              "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                               "toPorts": [{"ports": [{"port": str(DENIED_PORT), "protocol": "TCP"}]}]}]}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "client", "namespace": NS},
     "spec": {"endpointSelector": {"matchLabels": {"app": "client"}},
              "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "third"}}]}],
              "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}]}]}},
]


@contextlib.contextmanager
def scene(target):
    """Client, server (echo servers on ECHO_PORT and DENIED_PORT) and third pods in NS with
    POLICIES, on TARGET (a Node or a compose Deployment); the namespace goes afterwards."""
    target.apply(docs(namespace_doc(NS), pod_doc(NS, "client", {"app": "client"}),
                      pod_doc(NS, "server", {"app": "server"}), pod_doc(NS, "third", {"app": "third"})))
    servers = Servers()
    try:
        target.apply(docs(*(yaml.safe_dump(p) for p in POLICIES)))
        pods = target.pods()
        servers.start(pods[f"{NS}/server"]["spec"]["netns"], ECHO_PORT, DENIED_PORT)
        yield {"client": pods[f"{NS}/client"]["spec"]["netns"], "server_ip": pods[f"{NS}/server"]["status"]["podIP"]}
    finally:
        servers.close()
        for policy in POLICIES:
            target.cli("delete", "cnp", policy["metadata"]["name"], "-n", NS, check=False)
        target.cli("delete", "namespace", NS, check=False)


def run(target, sc: dict, disrupt, name: str, rounds: int = 1) -> None:
    """Steady traffic through ROUNDS of DISRUPT(target); assert it broke, lost and let
    through nothing, and that every pod's IP, identity and endpoint are unchanged."""
    before_state = desired_state(target)
    steady = Steady(sc["client"], sc["server_ip"], ECHO_PORT, DENIED_PORT)
    try:
        settle(2)
        start = steady.snapshot()
        for _ in range(rounds):
            disrupt(target)
            settle()
        figures = delta(start, steady.stop())
    finally:
        steady.kill()
    after_state = desired_state(target)
    print(f"\ndisruption {name} x{rounds}: " + json.dumps(figures))
    assert figures["exchanges"] > 0 and figures["pings_sent"] > 0 and figures["denied_tries"] > 0, figures
    assert figures["denied_ok"] == 0, f"{name}: a denied connection was answered: {figures}"
    assert figures["broken"] == 0, f"{name}: connections broke: {figures['broken_detail']}"
    assert figures["pings_lost"] == 0, f"{name}: pings lost: {figures}"
    assert after_state == before_state


class Steady:
    """steady.py inside NETNS, talking to IP; stopped (and reaped) on stop()."""

    def __init__(self, netns: str, ip: str, port: int, denied: int, connections: int = 5) -> None:
        self.proc = subprocess.Popen(["nsenter", f"--net={netns}", "--", sys.executable, STEADY, ip, str(port),
                                      str(denied), str(connections)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.proc.kill()
            raise AssertionError(f"steady traffic did not start: {ready} {self.proc.communicate()[1][-2000:]}")

    def snapshot(self) -> dict:
        self.proc.stdin.write("snapshot\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> dict:
        if self.proc.poll() is not None:
            raise AssertionError(f"steady traffic died: {self.proc.stderr.read()[-2000:]}")
        out, err = self.proc.communicate("stop\n", timeout=60)
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def settle(seconds: float = SETTLE) -> None:
    time.sleep(seconds)


def wait_restarted(node: Node, child: str, old_pid: int) -> None:
    """Until the supervisor runs CHILD under a new pid and every service is healthy."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    st: dict = {}
    while time.monotonic() < deadline:
        st = node.status()
        row = (st.get("supervisor") or {}).get("children", {}).get(child, {})
        if row.get("running") and row.get("pid") not in (None, old_pid) and st.get("healthy"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{child} did not come back healthy: {json.dumps(st, indent=1)[-3000:]}")


def child_pid(node: Node, child: str) -> int:
    return node.status()["supervisor"]["children"][child]["pid"]


def kill9(node: Node, child: str) -> None:
    """kill -9 of one of the supervisor's children (a service or nats); it restarts it."""
    pid = child_pid(node, child)
    os.kill(pid, signal.SIGKILL)
    wait_restarted(node, child, pid)


def down_up(node: Node) -> None:
    node.down()
    node.up()
    node.wait_healthy()


def reboot(node: Node) -> None:
    """As a reboot that keeps the state dir (KV) but not bpffs: the node stops, every pin
    under its bpffs root goes, the node starts again. Pods (netns, veths) stay, as a
    container runtime would recreate them with their addresses."""
    node.down()
    shutil.rmtree(node.bpf_root)
    node.up()
    node.wait_healthy()


def desired_state(node) -> dict:
    """What must survive any disruption: each pod's IP, identity and endpoint, and the
    identities with their labels."""
    pods = {ref: {k: p["status"].get(k) for k in ("podIP", "identity", "endpointID")}
            for ref, p in node.pods().items()}
    identities = json.loads(node.cli("get", "identities", "-o", "json").stdout)
    return {"pods": pods, "identities": identities}


def delta(before: dict, after: dict) -> dict:
    """The counts of AFTER that happened since BEFORE (both steady.py snapshots)."""
    keys = ("broken", "exchanges", "pings_sent", "pings_lost", "denied_tries", "denied_ok")
    out = {k: after[k] - before[k] for k in keys}
    out["broken_detail"] = after["broken_detail"][len(before["broken_detail"]):]
    out["pings_lost_seq"] = [s for s in after["pings_lost_seq"] if s not in before["pings_lost_seq"]]
    out["connections_held"] = after["connections"] - after["broken"]
    return out


def wait_connected(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until PROC has a TCP connection open (a CLI command: to NATS, so past its start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.communicate()}")
        if f"pid={proc.pid}," in subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {proc.pid} did not connect within {timeout:g}s")
