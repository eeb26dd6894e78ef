"""up / down / status / purge: the node's lifecycle from the command line."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats.errors

from services.cli.client import Client, context_path
from services.cli.output import age, table
from services.datapath import loader
from services.runtime.bus import RemoteError, ServiceError
from services.runtime.config import NodeConfig
from services.runtime.supervisor import Supervisor, leaving_path, open_log, read_pid
from services.wire import subjects

READY_TIMEOUT = 60.0      # seconds: three bcc compiles on a busy 2-core machine can take most of it


def up_foreground(config: NodeConfig, config_path: str | None) -> int:
    from services.runtime.logging import setup_logging
    setup_logging("supervisor", json=not sys.stderr.isatty())
    try:
        return asyncio.run(Supervisor(config, config_path).run())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _health_all(client: Client) -> dict[str, dict | str]:
    async def one(name: str):
        try:
            return await client.call(subjects.health(name), timeout=1.0)
        except RemoteError as exc:
            return exc.message
    results = await asyncio.gather(*(one(n) for n in subjects.SERVICES))
    return dict(zip(subjects.SERVICES, results))


def up_detached(config: NodeConfig, config_path: str | None, timeout: float = READY_TIMEOUT) -> int:
    if read_pid(config):
        print(f"node already running (pid {read_pid(config)})")
        return 0
    logs = config.state_path / "logs"
    argv = [sys.executable, "-m", "services.cli.main"]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    with open_log(config, "supervisor") as out:
        proc = subprocess.Popen([*argv, "up"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    reason = "nats-server did not start"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"error: the node exited with status {proc.returncode}; see {logs}/supervisor.log",
                  file=sys.stderr)
            return 1
        try:
            health = asyncio.run(_check_ready(config))
        except ServiceError as exc:
            reason = exc.message
        else:
            waiting = {n: h for n, h in health.items() if not (isinstance(h, dict) and h.get("ready"))}
            if not waiting:
                print(f"node {config.node} is up (pid {proc.pid}); context: {context_path(config)}")
                return 0
            reason = "; ".join(f"{n}: {h if isinstance(h, str) else h.get('detail')}" for n, h in waiting.items())
        time.sleep(0.3)
    print(f"error: services not healthy within {timeout:g}s: {reason}; stopping the node "
          f"(logs in {logs})", file=sys.stderr)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    return 1


async def _check_ready(config: NodeConfig) -> dict:
    async with Client(config) as client:
        return await _health_all(client)


def down(config: NodeConfig, timeout: float = 30.0, leaving: bool = False) -> int:
    """Stop the node; LEAVING (`down --purge`): for good, so that a cluster node's record
    leaves the cluster as it stops (supervisor.leaving_path)."""
    pid = read_pid(config)
    if pid is None:
        print("node is not running")
        return 0
    if leaving:
        leaving_path(config).parent.mkdir(parents=True, exist_ok=True)
        leaving_path(config).touch()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("node stopped")
            return 0
        time.sleep(0.1)
    print(f"error: node (pid {pid}) did not stop within {timeout:g}s", file=sys.stderr)
    return 1


async def status(config: NodeConfig, output: str) -> int:
    report = await status_report(config)
    if output == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 0 if report["healthy"] else 1


async def status_report(config: NodeConfig) -> dict:
    """What `capillary status` shows; report["healthy"] says whether every service is."""
    report: dict = {"node": config.node, "context": str(context_path(config)),
                    "state_dir": config.stateDir, "supervisor": None, "services": {},
                    "web": config.web.url if config.web.enabled else None,
                    "nats": {"url": config.nats.url, "connected": False},
                    "datapath": {"mode": config.datapath.mode, "bpf_root": config.datapath.bpfRoot,
                                 "pinned_maps": loader.pinned_maps(config)}}
    healthy = False
    try:
        async with Client(config) as client:
            report["nats"].update(await _nats_state(client))
            try:
                report["supervisor"] = await client.call(subjects.NODE_STATUS, timeout=1.0)
            except RemoteError:
                pass
            health = await _health_all(client)
            children = (report["supervisor"] or {}).get("children", {})
            for name, h in health.items():
                child = children.get(name, {})
                entry = {"healthy": isinstance(h, dict) and bool(h.get("ready")),
                         "restarts": child.get("restarts", 0)}
                if isinstance(h, dict):
                    entry.update(pid=h["pid"], uptime=round(time.time() - h["started"], 1),
                                 detail=h["detail"], metrics_port=h["metrics_port"], counters=h["counters"])
                else:
                    entry.update(pid=child.get("pid"), detail=h)
                report["services"][name] = entry
            healthy = all(s["healthy"] for s in report["services"].values())
    except ServiceError as exc:
        report["error"] = exc.message
    counters = report["services"].get("endpointd", {}).get("counters", {})
    report["datapath"]["programs_attached"] = counters.get("programs_attached", 0)
    report["healthy"] = healthy
    return report


async def _nats_state(client: Client) -> dict:
    """The server's version and its JetStream account; JetStream that does not answer (a
    server that has just restarted, a cluster electing its leaders) is reported, and the
    services are still asked how they are."""
    nc = client.bus.nc
    state = {"connected": nc.is_connected, "server_version": _version(nc)}
    try:
        info = await client.bus.js.account_info()
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        state["jetstream"] = {"error": str(exc) or type(exc).__name__}
    else:
        state["jetstream"] = {"streams": info.streams, "storage_bytes": info.storage}
    return state


def _print_status(r: dict) -> None:
    sup = r.get("supervisor")
    print(f"Node:        {r['node']}  ({'healthy' if r['healthy'] else 'NOT healthy'})")
    if sup:
        print(f"Supervisor:  pid {sup['pid']}, up {age(sup['started'])}")
    nats = r["nats"]
    if nats.get("connected"):
        js = nats["jetstream"]
        jetstream = f"JetStream unavailable: {js['error']}" if "error" in js else \
            f"JetStream {js['streams']} streams, {js['storage_bytes']} bytes"
        print(f"NATS:        {nats['url']} (server {nats['server_version']}), {jetstream}")
    else:
        print(f"NATS:        {nats['url']} unreachable: {r.get('error', '')}")
    print(f"Context:     {r['context']}")
    web = ((sup or {}).get("children") or {}).get("web")
    if web:
        state = f"pid {web['pid']}" if web.get("running") else f"not running (last exit {web.get('last_exit')})"
        print(f"Web:         {r['web']} ({state}, restarts {web['restarts']}); `capillary web` prints its link")
    dp = r["datapath"]
    print(f"Datapath:    mode {dp['mode']}, {len(dp['pinned_maps'])} pinned maps in {dp['bpf_root']}, "
          f"{dp['programs_attached']} programs attached")
    rows = []
    for name, s in r["services"].items():
        rows.append([name, "yes" if s["healthy"] else "no", str(s.get("pid") or "-"),
                     f"{s['uptime']}s" if "uptime" in s else "-", str(s["restarts"]),
                     ", ".join(f"{k}={v}" for k, v in s.get("counters", {}).items()) or s.get("detail", "")])
    if rows:
        print()
        print(table(["SERVICE", "HEALTHY", "PID", "UPTIME", "RESTARTS", "STATE"], rows))


async def leave_cluster(config: NodeConfig) -> None:
    """A cluster node purged: its routed takes it out of the cluster as it stops, unless it
    was stopped already or that took longer than it may (routed.cluster.LEAVE_TIMEOUT, with
    the machine busy). So this makes sure, through a peer's NATS: nothing to do when routed
    did it. Nothing reachable: said, not hidden."""
    from services.routed.cluster import LEAVE_TIMEOUT, forget
    try:
        async with Client(config) as client:
            nodes = await client.bus.kv(subjects.BUCKET_NODES)
            endpoints = await client.bus.kv(subjects.BUCKET_CLUSTER_ENDPOINTS)
            if await asyncio.wait_for(forget(client.bus, nodes, endpoints, config.node), LEAVE_TIMEOUT):
                print(f"removed node {config.node} from cluster {config.cluster.name}")
    except Exception as exc:     # any failure: the record stays (NotReady), and the user is told
        print(f"warning: node {config.node} could not be removed from cluster {config.cluster.name}'s "
              f"records ({getattr(exc, 'message', None) or exc or type(exc).__name__}): the others list it "
              "NotReady", file=sys.stderr)


def purge(config: NodeConfig) -> int:
    """Remove everything the node made in the kernel and on disk. The node must be down."""
    from services.cli.purge import purge_node
    if read_pid(config):
        print("error: the node is running; `capillary down` first", file=sys.stderr)
        return 1
    for item in purge_node(config):
        print(f"removed {item}")
    return 0



def _version(nc) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"
