"""Node lifecycle: up, status, health, credentials, supervisor restarts, NATS permissions."""
import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError

from services.wire import codec, subjects
from services.wire.subjects import SERVICES
from tests.support.node import REPO, Node, pod_doc


def test_status_reports_every_service_healthy(node):
    st = node.wait_healthy()
    assert set(st["services"]) == set(SERVICES)
    for name, svc in st["services"].items():
        assert svc["healthy"], name
        assert svc["pid"] > 0 and svc["uptime"] >= 0 and svc["restarts"] == 0
    assert st["nats"]["connected"] and st["nats"]["jetstream"]["streams"] >= 3
    assert set(st["datapath"]["pinned_maps"]) >= {"endpoints", "ipcache", "metrics"}
    text = node.cli("status").stdout
    assert "endpointd" in text and "healthy" in text


def test_context_file_is_private_nats_cli_json(node):
    path = node.status()["context"]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    ctx = json.loads(open(path).read())
    assert ctx["url"] == f"nats://127.0.0.1:{node.nats_port}"
    assert ctx["user"] == "admin" and len(ctx["password"]) >= 20


def test_logs_are_not_world_readable(node):
    logs = Path(node.status()["context"]).parent.parent / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o750
    files = sorted(p.name for p in logs.glob("*.log"))
    assert {"endpointd.log", "policyd.log", "routed.log", "flowd.log", "supervisor.log"} <= set(files)
    assert {f: oct(stat.S_IMODE((logs / f).stat().st_mode)) for f in files} == {f: "0o640" for f in files}


def test_nats_listens_on_loopback_only(node):
    out = subprocess.run(["ss", "-Hltn", f"sport = :{node.nats_port}"], capture_output=True, text=True).stdout
    addrs = {line.split()[3] for line in out.splitlines() if line.strip()}
    assert addrs == {f"127.0.0.1:{node.nats_port}"}


def test_every_service_serves_prometheus_metrics(node):
    st = node.status()
    for name, svc in st["services"].items():
        body = urllib.request.urlopen(f"http://127.0.0.1:{svc['metrics_port']}/metrics", timeout=5).read().decode()
        assert "capillary_bus_requests_total" in body, name


def _creds(node, user):
    return json.loads((node.state_dir / "nats" / f"{user}.context.json").read_text())


async def _try_as(node, user, subject, publish=True):
    """Subscribe (and publish) as USER; return the permission errors the server sent."""
    errors = []

    async def on_error(exc):
        errors.append(str(exc))

    c = _creds(node, user)
    nc = await nats.connect(c["url"], user=c["user"], password=c["password"], error_cb=on_error,
                            allow_reconnect=False, inbox_prefix=subjects.inbox_prefix(user).encode())
    try:
        await nc.subscribe(subject)
        if publish:
            await nc.publish(subject, b"x")
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    return errors


def test_service_credentials_only_allow_their_own_subjects(node):
    # routed may not take over endpointd's pod requests, nor publish on them.
    errors = asyncio.run(_try_as(node, "routed", "capillary.pod.apply"))
    assert any('subscription to "capillary.pod.apply"' in e for e in errors), errors
    assert any('publish to "capillary.pod.apply"' in e for e in errors), errors
    # It may serve its own subject, but not send requests to itself.
    assert asyncio.run(_try_as(node, "routed", "capillary.ipcache.list", publish=False)) == []
    errors = asyncio.run(_try_as(node, "routed", "capillary.ipcache.list"))
    assert errors == ['nats: permissions violation for publish to "capillary.ipcache.list"']


async def _raw_request(node, subject, payload):
    c = _creds(node, "admin")
    nc = await nats.connect(c["url"], user=c["user"], password=c["password"])
    try:
        msg = await nc.request(subject, payload, timeout=5)
        return codec.decode(msg.data)
    finally:
        await nc.close()


def test_health_subject_answers(node):
    reply = asyncio.run(_raw_request(node, "capillary.health.policyd", b""))
    assert reply["ok"] and reply["result"]["service"] == "policyd" and reply["result"]["ready"]


def test_supervisor_restarts_a_crashed_service(node):
    pid = node.service_pid("policyd")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = node.status()
        svc = st["services"]["policyd"]
        if svc["healthy"] and svc["pid"] != pid:
            break
        time.sleep(0.3)
    assert svc["pid"] != pid and svc["healthy"] and svc["restarts"] == 1
    log = (node.state_dir / "logs" / "supervisor.log").read_text()
    assert "exited, restarting" in log and "policyd" in log


def test_up_detach_fails_with_reason_and_leaves_nothing(tmp_path):
    bad = Node(tmp_path)
    text = bad.config_path.read_text().replace(f"routerDevice: {bad.router_device}", "routerDevice: lo")
    bad.config_path.write_text(text)
    proc = bad.cli("up", "--detach", "--timeout", "8", check=False)
    try:
        assert proc.returncode != 0
        assert "not healthy within 8s" in proc.stderr and "routed" in proc.stderr
        assert bad.cli("status", check=False).returncode != 0
    finally:
        bad.purge()
    assert "lo" in subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True).stdout
    assert not bad.leftovers()


def test_foreground_up_stops_cleanly_on_ctrl_c(tmp_path):
    fg = Node(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--config", str(fg.config_path), "up"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        fg.wait_healthy(timeout=60)
        pids = [s["pid"] for s in fg.status()["services"].values()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fg.purge()
    assert not fg.leftovers()


def test_nats_beyond_loopback_runs_with_tls_for_every_client(tmp_path):
    t = Node(tmp_path, pod_cidr="10.216.0.0/24", nats={"host": "0.0.0.0"})
    try:
        t.up()
        st = t.wait_healthy()                              # supervisor and services, over TLS
        assert st["nats"]["url"] == f"tls://127.0.0.1:{t.nats_port}"
        ctx = json.loads(Path(st["context"]).read_text())
        tls_dir = t.state_dir / "nats" / "tls"
        assert ctx["ca"] == str(tls_dir / "ca.pem")
        for key in ("ca-key.pem", "server-key.pem", "client-key.pem"):
            assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600, key
        t.apply(pod_doc("default", "tls"))                 # endpointd -> policyd, routed
        assert "tls" in t.pods().get("default/tls", {}).get("metadata", {}).get("name", "")
        with socket.create_connection(("127.0.0.1", t.nats_port), timeout=10) as s:
            info = json.loads(s.makefile("rb").readline()[5:])
        assert info["tls_required"] is True
        with pytest.raises(Exception):                     # a plain client gets nowhere
            asyncio.run(nats.connect(f"nats://127.0.0.1:{t.nats_port}", user="admin",
                                     password=ctx["password"], allow_reconnect=False, connect_timeout=3))
        # the subscriber example, as the read-only flows user, over TLS
        example = subprocess.Popen([sys.executable, str(REPO / "examples" / "subscribe_flows.py"),
                                    str(t.state_dir / "nats" / "flows.context.json")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = example.stdout.readline()
            assert first.startswith("subscribed to capillary.flows.> on 127.0.0.1:"), example.stderr.read()
        finally:
            example.kill()
            example.wait()
    finally:
        t.purge()
    assert not t.leftovers()


def test_masquerade_is_opt_in_and_removed_on_purge(tmp_path):
    m = Node(tmp_path, pod_cidr="10.215.0.0/24")
    m.config_path.write_text(m.config_path.read_text() + "masquerade: true\n")
    try:
        m.up()
        nat = subprocess.run(["iptables", "-t", "nat", "-S", "CAPILLARY-POSTROUTING"],
                             capture_output=True, text=True).stdout
        assert "-s 10.215.0.0/24 ! -d 10.215.0.0/24" in nat and "MASQUERADE" in nat
    finally:
        m.purge()
    assert not m.leftovers()
    assert "CAPILLARY-POSTROUTING" not in subprocess.run(["iptables-save", "-t", "nat"],
                                                         capture_output=True, text=True).stdout
