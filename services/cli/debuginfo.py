"""`capillary debuginfo [-f FILE]`: one archive to attach to a bug report.

It holds the node's status and effective config, versions, the objects the services keep
(namespaces, pods, identities, policies, the ipcache), every pinned map's contents, recent
flows and drops, each service's metrics, the kernel's view (links, addresses, routes, tc
filters on the pod veths, iptables) and the service logs. Each part is gathered on its own:
on a broken node the archive holds what could be read, and errors.txt says what could not.
Credentials are never included.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import yaml

from services.cli.client import Client
from services.cli.node import status_report
from services.datapath.maps.conntrack import ConntrackMap
from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.events import EventStatsMap
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.maps.metrics import MetricsMap
from services.datapath.maps.policy import PolicyMap
from services.runtime.config import NodeConfig
from services.wire import subjects
from services.wire.messages import FlowFilter, FlowQuery, ListRequest

LOG_TAIL = 4 << 20          # bytes of each service log (its end)
FLOWS = 4095                # as many as the default history holds
SERVICES = ("supervisor", "nats", *subjects.SERVICES)


def add_parser(sub) -> None:
    p = sub.add_parser("debuginfo", help="write an archive for a bug report: status, config, maps, flows, logs")
    p.add_argument("-f", "--file", help="archive to write (default capillary-debuginfo-NODE-TIME.tar.gz)")


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def _run(*argv: str) -> bytes:
    proc = subprocess.run(argv, capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode().strip()}")
    return proc.stdout


class Archive:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.errors: list[str] = []

    async def add(self, name: str, gather: Callable[[], Awaitable[bytes]] | Callable[[], bytes]) -> None:
        try:
            data = gather()
            if asyncio.iscoroutine(data):
                data = await data
            self.files[name] = data
        except Exception as exc:            # a bug report tool reports what failed and goes on
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    def write(self, path: Path) -> None:
        if self.errors:
            self.files["errors.txt"] = ("\n".join(self.errors) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w:gz") as tar:
            root = path.name.removesuffix(".tar.gz")
            for name, data in sorted(self.files.items()):
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))


def versions() -> bytes:
    lines = [f"capillary {metadata.version('capillary')}", f"kernel {platform.release()} {platform.version()}",
             f"python {platform.python_version()}"]
    for package in ("nats-py", "pyroute2", "msgpack", "structlog", "prometheus-client"):
        lines.append(f"{package} {metadata.version(package)}")
    try:
        import bcc
        lines.append(f"bcc {getattr(bcc, '__version__', 'unknown')}")
    except ImportError:
        lines.append("bcc not importable")
    return ("\n".join(lines) + "\n").encode()


def maps(config: NodeConfig) -> dict[str, Callable[[], bytes]]:
    root = Path(config.datapath.bpfRoot)
    return {
        "maps/endpoints.json": lambda: _json([asdict(e) for e in EndpointMap(root).all().values()]),
        "maps/ipcache.json": lambda: _json(IpcacheMap(root).all()),
        "maps/policy.json": lambda: _json([{"key": k._asdict(), "value": v.value._asdict(), "packets": v.packets,
                                            "bytes": v.bytes} for k, v in PolicyMap(root).all().items()]),
        "maps/conntrack.json": lambda: _json([c.__dict__ for c in ConntrackMap(root).all()]),
        "maps/metrics.json": lambda: _json([asdict(c) for c in MetricsMap(root).nonzero()]),
        "maps/events_stats.json": lambda: _json(asdict(EventStatsMap(root).read())),
        "maps/pinned.txt": lambda: ("\n".join(sorted(p.name for p in root.iterdir())) + "\n").encode(),
    }


def kernel(pod_ifnames: list[str]) -> dict[str, Callable[[], bytes]]:
    out: dict[str, Callable[[], bytes]] = {
        "kernel/links.txt": lambda: _run("ip", "-d", "link", "show"),
        "kernel/addresses.txt": lambda: _run("ip", "addr", "show"),
        "kernel/routes.txt": lambda: _run("ip", "route", "show", "table", "all"),
        "kernel/rules.txt": lambda: _run("ip", "rule", "show"),
        "kernel/iptables.txt": lambda: _run("iptables-save"),
        "kernel/sysctl.txt": lambda: _run("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"),
    }
    for name in pod_ifnames:
        out[f"kernel/tc-{name}.txt"] = lambda n=name: _run("tc", "filter", "show", "dev", n, "ingress") + \
            _run("tc", "filter", "show", "dev", n, "egress")
    return out


def logs(config: NodeConfig) -> dict[str, Callable[[], bytes]]:
    def tail(path: Path) -> bytes:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_TAIL))
            return f.read()

    return {f"logs/{name}.log": (lambda p=config.state_path / "logs" / f"{name}.log": tail(p))
            for name in SERVICES if (config.state_path / "logs" / f"{name}.log").exists()}


async def from_services(archive: Archive, client: Client, report: dict) -> list[str]:
    """The services' objects, flows and metrics; returns the pods' host interfaces."""
    pods: list[dict] = []

    async def pod_list() -> bytes:
        pods.extend(await client.call(subjects.POD_LIST, ListRequest()))
        return _json(pods)

    await archive.add("objects/pods.json", pod_list)
    for name, subject in (("namespaces", subjects.NAMESPACE_LIST), ("identities", subjects.IDENTITY_LIST),
                          ("policies", subjects.POLICY_LIST), ("ipcache", subjects.IPCACHE_LIST),
                          ("policy-rules", subjects.POLICY_RULES)):
        await archive.add(f"objects/{name}.json", lambda s=subject: _call(client, s, ListRequest()))
    await archive.add("flows/recent.json", lambda: _call(client, subjects.OBSERVER_FLOWS, FlowQuery(last=FLOWS)))
    await archive.add("flows/drops.json", lambda: _call(
        client, subjects.OBSERVER_FLOWS, FlowQuery(last=FLOWS, filter=FlowFilter(verdict=["DROPPED"]))))
    for service, entry in report.get("services", {}).items():
        if entry.get("metrics_port"):
            url = f"http://{client.config.metrics.host}:{entry['metrics_port']}/metrics"
            await archive.add(f"metrics/{service}.txt",
                              lambda u=url: asyncio.to_thread(lambda: urllib.request.urlopen(u, timeout=5).read()))
    return [p["status"]["host_ifname"] for p in pods]


async def _call(client: Client, subject: str, message) -> bytes:
    return _json(await client.call(subject, message, timeout=10.0))


async def debuginfo(config: NodeConfig, file: str | None) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(file or f"capillary-debuginfo-{config.node}-{stamp}.tar.gz")
    archive = Archive()
    report = await status_report(config)
    await archive.add("status.json", lambda: _json(report))
    await archive.add("config.yaml", lambda: yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
    await archive.add("versions.txt", versions)
    ifnames: list[str] = []
    if report["nats"].get("connected"):
        async with Client(config) as client:
            ifnames = await from_services(archive, client, report)
    else:
        archive.errors.append(f"services: NATS unreachable ({report.get('error', '')}): no objects, flows or "
                              "metrics")
    for name, gather in {**maps(config), **kernel(ifnames), **logs(config)}.items():
        await archive.add(name, gather)
    archive.write(path)
    size = path.stat().st_size
    print(f"wrote {path} ({len(archive.files)} files, {size / 1024:.0f} KiB)"
          + (f"; {len(archive.errors)} parts could not be gathered, see errors.txt" if archive.errors else ""))
    return 0
