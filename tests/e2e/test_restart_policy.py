"""Policy survives what restarts do to it: policyd restarted while endpointd is creating a
pod, a reboot that loses every pinned map but keeps KV, and a stored policy that no longer
compiles. Each pod keeps its policy entries and a denied port stays denied."""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from services.datapath.numbers import POLICY_DEFAULT, POLICY_DENY
from services.policyd.service import kv_key
from services.runtime.bus import Bus, Credentials
from services.wire import codec, subjects
from tests.e2e.test_restart import _kill_and_wait
from tests.support.node import REPO, docs, namespace_doc, pod_doc
from tests.support.traffic import PROBER, Servers


def b_80(ns: str) -> dict:
    """b takes TCP 80 from a and nothing else."""
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "b-80", "namespace": ns},
            "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "a"}}],
                                  "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}


def entries(node, ref: str) -> list[dict]:
    out = json.loads(node.cli("bpf", "policy", "get", ref, "-o", "json").stdout)
    return sorted(({k: e[k] for k in ("direction", "identity", "protocol", "port", "prefixlen", "flags")}
                   for e in out), key=lambda e: json.dumps(e, sort_keys=True))


def probe(node, ns: str, *ports: int) -> dict[int, bool]:
    b_ip = node.pod_ip(f"{ns}/b")
    targets = json.dumps([["tcp", b_ip, p] for p in ports])
    out = node.run_in(f"{ns}/a", sys.executable, PROBER, targets, timeout=60, check=True).stdout
    return {p: json.loads(out)[f"tcp {b_ip} {p}"] for p in ports}


def wait_for(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:g}s")


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


def _cleanup(node, ns: str) -> None:
    node.cli("delete", "cnp", "b-80", "-n", ns, check=False)
    node.cli("delete", "namespace", ns, check=False)


def test_a_reboot_that_loses_the_pinned_maps_keeps_every_pods_policy(node, servers):
    """down, the node's bpffs pins removed (as a reboot does; KV is kept), up."""
    ns = "rb"
    node.apply(docs(namespace_doc(ns), pod_doc(ns, "a", {"app": "a"}), pod_doc(ns, "b", {"app": "b"})))
    try:
        node.apply(yaml.safe_dump(b_80(ns)))
        servers.start(node.netns(f"{ns}/b"), 80, 81)
        assert probe(node, ns, 80, 81) == {80: True, 81: False}
        before = {ref: entries(node, ref) for ref in (f"{ns}/a", f"{ns}/b")}
        assert all(before.values())
        node.down()
        shutil.rmtree(node.bpf_root)
        node.up()
        after = {ref: entries(node, ref) for ref in (f"{ns}/a", f"{ns}/b")}
        assert after == before
        for _ in range(5):
            assert probe(node, ns, 80, 81) == {80: True, 81: False}
    finally:
        _cleanup(node, ns)


async def _freeze_endpointd_after_sync(node, endpointd_pid: int, pod_yaml: str) -> subprocess.Popen:
    """Create a pod and stop endpointd (SIGSTOP) the moment both policyd's answer to its sync
    and routed's to its ipcache write (endpointd asks them at once) have reached it: the pod
    has its entries but is in none of endpointd's maps yet, and no request of endpointd's is
    left to time out while it is stopped."""
    bus = await Bus.connect(Credentials.load(node.state_dir / "nats" / "admin.context.json"), name="freezer")
    frozen = asyncio.Event()
    seen: set[str] = set()

    async def on_reply(msg) -> None:
        # Only policy.endpoint.sync answers endpointd with {"written": N}, and only an ipcache
        # write with an entry of source "endpoint". (One subscription: nats-py runs each
        # subscription's callbacks in a task of its own, unordered.)
        result = codec.decode(msg.data).get("result")
        if isinstance(result, dict) and set(result) == {"written"}:
            seen.add("sync")
        elif isinstance(result, dict) and result.get("source") == "endpoint" and "cidr" in result:
            seen.add("ipcache")
        if seen == {"sync", "ipcache"} and not frozen.is_set():
            os.kill(endpointd_pid, signal.SIGSTOP)
            frozen.set()
    await bus.nc.subscribe(f"{subjects.inbox_prefix('endpointd')}.>", cb=on_reply)
    await bus.nc.flush()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--config", str(node.config_path),
                             "apply", "-f", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    proc.stdin.write(pod_yaml)
    proc.stdin.close()
    try:
        await asyncio.wait_for(frozen.wait(), timeout=60)
    finally:
        await bus.drain()
    return proc


def test_policyd_restarted_while_endpointd_creates_a_pod(node, servers):
    ns = "mc"
    node.apply(docs(namespace_doc(ns), pod_doc(ns, "a", {"app": "a"})))
    node.apply(yaml.safe_dump(b_80(ns)))
    endpointd = node.service_pid("endpointd")
    try:
        apply = asyncio.run(_freeze_endpointd_after_sync(node, endpointd, pod_doc(ns, "b", {"app": "b"})))
        try:
            _kill_and_wait(node, "policyd")
        finally:
            os.kill(endpointd, signal.SIGCONT)
        out = apply.stdout.read()               # the CLI may time out; the pod is made regardless,
        apply.wait(timeout=120)
        if apply.returncode != 0 and "pod.apply" not in out:
            # ... unless endpointd answered with an error: one of its own requests timed out
            # across the freeze (the reply read after the timer fired). Then nothing was made,
            # and a user applies again.
            wait_for(lambda: f"{ns}/b" not in node.pods(), "a failed create left pod b behind")
            node.apply(docs(pod_doc(ns, "b", {"app": "b"})))
        wait_for(lambda: f"{ns}/b" in node.pods(), "pod b was not created")
        ingress = [e for e in entries(node, f"{ns}/b") if e["direction"] == "ingress"]
        assert any(e["port"] == 80 for e in ingress), f"b lost its policy entries: {ingress}"
        servers.start(node.netns(f"{ns}/b"), 80, 81)
        for _ in range(5):
            assert probe(node, ns, 80, 81) == {80: True, 81: False}
    finally:
        os.kill(endpointd, signal.SIGCONT)
        _cleanup(node, ns)


async def _store_raw(node, key: str, document: dict) -> None:
    bus = await Bus.connect(Credentials.load(node.state_dir / "nats" / "admin.context.json"), name="editor")
    try:
        kv = await bus.kv(subjects.BUCKET_POLICIES)
        await kv.put(key, codec.encode(document))
    finally:
        await bus.drain()


def test_a_stored_policy_that_no_longer_compiles_holds_its_pods_at_default_deny(node, servers):
    ns = "bp"
    node.apply(docs(namespace_doc(ns), pod_doc(ns, "a", {"app": "a"}), pod_doc(ns, "b", {"app": "b"})))
    try:
        node.apply(yaml.safe_dump(b_80(ns)))
        servers.start(node.netns(f"{ns}/b"), 80, 81)
        assert probe(node, ns, 80, 81) == {80: True, 81: False}
        damaged = b_80(ns)
        damaged["spec"]["ingress"][0]["fromEndpoints"] = "no longer a list"
        asyncio.run(_store_raw(node, kv_key("CiliumNetworkPolicy/bp/b-80"), damaged))
        _kill_and_wait(node, "policyd")

        assert probe(node, ns, 80, 81) == {80: False, 81: False}
        b_entries = entries(node, f"{ns}/b")
        assert b_entries and all(e["prefixlen"] == 32 for e in b_entries), b_entries   # defaults only
        assert {e["direction"] for e in b_entries} == {"ingress", "egress"}
        assert all(e["flags"] == POLICY_DEFAULT | POLICY_DENY for e in b_entries)
        policyd = node.status()["services"]["policyd"]
        assert policyd["counters"]["policies_broken"] == 1
        assert "CiliumNetworkPolicy/bp/b-80" in policyd["detail"] and "fromEndpoints" in policyd["detail"]
        assert "capillary_policies_broken 1.0" in node.metrics("policyd")

        node.cli("delete", "cnp", "b-80", "-n", ns)                 # lifts it
        assert probe(node, ns, 80, 81) == {80: True, 81: True}
        assert "policies_broken" not in node.status()["services"]["policyd"]["counters"]
    finally:
        _cleanup(node, ns)
