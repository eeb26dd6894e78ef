"""NATS restart: while nats-server is down, the datapath keeps forwarding and enforcing,
every request gets a clear error at once (never a hang), and once it is back the services
reconnect, re-list what they follow, and the desired state is what it was.

The outage is held open by stopping the supervisor (SIGSTOP) before nats-server is killed,
so it cannot restart it; SIGCONT lets it do so."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from services.runtime.bus import Bus, Credentials, RemoteError
from services.wire import subjects
from services.wire.messages import UNAVAILABLE, ListRequest
from tests.support import disruption
from tests.support.flows import FlowCollector
from tests.support.node import REPO, docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, ping, probe

NS = "nr"
POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "b-80", "namespace": NS},
          "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}


@pytest.fixture(scope="module")
def scene(node):
    node.apply(docs(namespace_doc(NS), pod_doc(NS, "a"), pod_doc(NS, "b")))
    node.apply(yaml.safe_dump(POLICY))
    servers = Servers()
    try:
        servers.start(node.netns(f"{NS}/b"), 80, 81)
        yield node
    finally:
        servers.close()


def state(node) -> dict:
    return {**disruption.desired_state(node),
            "policies": json.loads(node.cli("get", "policies", "-A", "-o", "json").stdout)}


class Outage:
    """nats-server killed, and kept down until the `with` block ends."""

    def __init__(self, node) -> None:
        self.node = node

    def __enter__(self) -> "Outage":
        st = self.node.status()
        self.supervisor = st["supervisor"]["pid"]
        self.nats = st["supervisor"]["children"]["nats"]["pid"]
        os.kill(self.supervisor, signal.SIGSTOP)
        os.kill(self.nats, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{self.nats}") and _state(self.nats) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        os.kill(self.supervisor, signal.SIGCONT)
        disruption.wait_restarted(self.node, "nats", self.nats)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


async def _request_in_outage(creds: Credentials, outage_started) -> RemoteError:
    """A service's view: connected (reconnecting forever) when NATS goes; a request then."""
    bus = await Bus.connect(creds, "nats-restart-test")
    try:
        await outage_started()
        try:
            await bus.request(subjects.POD_LIST, ListRequest(), timeout=3.0)
        except RemoteError as exc:
            return exc
        raise AssertionError("a request during the outage was answered")
    finally:
        await bus.close()


def _follow(node, *args: str) -> subprocess.Popen:
    """A following command, started and connected (its first output line is out)."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--config", str(node.config_path), *args,
                             "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    disruption.wait_connected(proc)
    return proc


def test_requests_in_an_outage_fail_clearly_and_state_survives_a_restart(scene):
    node = scene
    before = state(node)
    a_ns, b_ip = node.netns(f"{NS}/a"), node.pod_ip(f"{NS}/b")
    b_ns, a_ip = node.netns(f"{NS}/b"), node.pod_ip(f"{NS}/a")
    creds = Credentials.load(node.config_path.parent / "state" / "nats" / "admin.context.json")
    holder: dict = {}

    async def outage_started() -> None:
        holder["outage"] = await asyncio.to_thread(Outage(node).__enter__)

    followers = [_follow(node, "observe", "-f"), _follow(node, "monitor")]
    try:
        error = asyncio.run(_request_in_outage(creds, outage_started))
        assert error.code == UNAVAILABLE, error
        for args in (("get", "pods", "-A"), ("apply", "-f", "-"), ("observe", "--last", "1")):
            out = node.cli(*args, check=False, input=pod_doc(NS, "c"), timeout=60)
            assert out.returncode == 1 and "cannot connect to NATS" in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
        for proc in followers:       # a command that follows ends, saying why
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and "lost the connection to NATS" in err, err
            assert "Traceback" not in err
        # The datapath goes on without the bus: allowed, denied, pings.
        assert ping(b_ns, a_ip, count=3)
        assert probe(a_ns, "tcp", b_ip, 80) and not probe(a_ns, "tcp", b_ip, 81)
    finally:
        for proc in followers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if "outage" in holder:
            holder["outage"].__exit__(None, None, None)
    node.wait_healthy()
    assert state(node) == before
    # Every service is back on the bus: a new pod goes through endpointd, policyd and
    # routed, and flowd (which re-lists pods) names it in its flows.
    flows = FlowCollector(node)
    try:
        node.apply(pod_doc(NS, "c"))
        c_ns = node.netns(f"{NS}/c")
        assert ping(c_ns, a_ip)
        deadline = time.monotonic() + 30
        while not any(f.get("source", {}).get("pod_name") == "c" for _, f in flows.all()):
            assert time.monotonic() < deadline, "no flow names the new pod"
            time.sleep(0.2)
    finally:
        flows.close()
    assert not probe(c_ns, "tcp", b_ip, 80)                 # b's policy selects c's traffic too
    assert probe(a_ns, "tcp", b_ip, 80) and not probe(a_ns, "tcp", b_ip, 81)
    node.cli("delete", "pod", f"{NS}/c")
