"""`capillary up`: runs nats-server, the four services and the service map page (services/web),
restarts what crashes.

The supervisor holds an exclusive lock on {stateDir}/run/capillary.pid for its lifetime, so
two nodes never run on one state directory. It answers capillary.node.status with its
process table and its host: the machine's boot id and its network namespace's inode, by
which a client on the same machine finds the node's host namespace (host_namespace).
Services log to {stateDir}/logs/<service>.log, mode 0640 (logs name pods, addresses and
policies: readable by root and the directory's group, not by everyone).
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from services.runtime import natsserver
from services.runtime.bus import Bus, Credentials
from services.runtime.config import NodeConfig
from services.wire import subjects

log = structlog.get_logger()

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0     # a process up this long gets its backoff reset
STOP_GRACE = 10.0
LOG_MODE = 0o640
LOG_DIR_MODE = 0o750


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def host_identity() -> dict:
    """This machine (its boot id) and this process's network namespace (its inode)."""
    return {"boot_id": BOOT_ID.read_text().strip(), "netns": os.stat("/proc/self/ns/net").st_ino}


def host_namespace(status: dict) -> str | None:
    """The host network namespace of the node whose STATUS (capillary.node.status) this is,
    as a path here; None unless it is proven on this machine (same boot id, and the
    supervisor's pid still in a namespace of the inode it reported)."""
    host, pid = status.get("host") or {}, status.get("pid")
    if not isinstance(pid, int) or host.get("boot_id") != BOOT_ID.read_text().strip():
        return None
    path = f"/proc/{pid}/ns/net"
    try:
        return path if os.stat(path).st_ino == host.get("netns") else None
    except OSError:
        return None


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)

    def row(self) -> dict:
        running = self.proc is not None and self.proc.returncode is None
        return {"pid": self.proc.pid if running else None, "running": running,
                "started": self.started, "restarts": self.restarts, "last_exit": self.last_exit}


def open_log(config: NodeConfig, name: str):
    """{stateDir}/logs/NAME.log for appending, mode LOG_MODE even when an older file was looser."""
    logs = config.state_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.chmod(logs, LOG_DIR_MODE)
    fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
    os.fchmod(fd, LOG_MODE)
    return os.fdopen(fd, "ab")


def pid_path(config: NodeConfig) -> Path:
    return config.state_path / "run" / "capillary.pid"


def leaving_path(config: NodeConfig) -> Path:
    """Present while the node stops to be purged (`down --purge`): a cluster node's routed
    then takes the node's record out of the cluster as it stops (services.routed.cluster)."""
    return config.state_path / "run" / "leaving"


def read_pid(config: NodeConfig) -> int | None:
    """The running supervisor's pid, or None (a stale file is ignored)."""
    try:
        pid = int(pid_path(config).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


class Supervisor:
    def __init__(self, config: NodeConfig, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.children: dict[str, Child] = {}
        self._stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self.bus: Bus | None = None
        self.started = time.time()

    def _take_lock(self) -> None:
        path = pid_path(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"a node is already running on {self.config.stateDir} "
                               f"(pid {read_pid(self.config)}); `capillary down` stops it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.config_path:
            env["CAPILLARY_CONFIG"] = str(Path(self.config_path).resolve())
        return env

    async def _spawn(self, child: Child) -> None:
        out = open_log(self.config, child.name)
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, env=self._env())
        finally:
            out.close()
        child.started = time.time()
        log.info("started", child=child.name, pid=child.proc.pid)

    async def _watch(self, child: Child) -> None:
        """Keep CHILD running until the node stops; restart with exponential backoff."""
        while not self._stopping.is_set():
            await self._spawn(child)
            if self._stopping.is_set():
                # The node began stopping while this one started (a restart after a crash):
                # _stop_children may have passed it by, and it must not outlive the node
                # (a routed left running re-adds the iptables rules a purge removed).
                await self._stop_one(child)
                return
            rc = await child.proc.wait()
            child.last_exit = rc
            if self._stopping.is_set():
                return
            uptime = time.time() - child.started
            if uptime > STABLE_AFTER:
                child.backoff = BACKOFF_FIRST
            log.warning("exited, restarting", child=child.name, status=rc,
                        uptime=round(uptime, 1), backoff=child.backoff)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=child.backoff)
                return
            except asyncio.TimeoutError:
                pass
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            child.restarts += 1
            if child.name == "nats" and not self.config.nats.external:
                natsserver.write_config(self.config)

    async def _status(self, _req) -> dict:
        return {"node": self.config.node, "pid": os.getpid(), "host": host_identity(), "started": self.started,
                "state_dir": self.config.stateDir, "nats_url": self.config.nats.url,
                "context": str(self.config.credentials_path(natsserver.ADMIN)),
                "children": {name: c.row() for name, c in self.children.items()}}

    async def run(self) -> int:
        self._take_lock()
        leaving_path(self.config).unlink(missing_ok=True)     # from a purge that did not happen
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        natsserver.ensure_credentials(self.config)
        tasks = []
        if not self.config.nats.external:
            conf = natsserver.write_config(self.config)
            self.children["nats"] = Child("nats", [natsserver.nats_server_binary(), "-c", str(conf)])
            tasks.append(asyncio.create_task(self._watch(self.children["nats"])))
        try:
            await asyncio.to_thread(natsserver.wait_listening, self.config.nats.host,
                                    self.config.nats.port, 15)
        except (TimeoutError, RuntimeError) as exc:
            log.error("nats did not come up", error=str(exc))
            self._stopping.set()
            await self._stop_children()
            return 1
        creds = Credentials.load(self.config.credentials_path(natsserver.ADMIN))
        self.bus = await Bus.connect(creds, name=f"supervisor@{self.config.node}",
                                     node=self.config.node if self.config.cluster.enabled else None)
        await self.bus.serve(subjects.NODE_STATUS, None, self._status)
        for name in subjects.SERVICES:
            argv = [sys.executable, "-m", f"services.{name}"]
            if self.config_path:
                argv += ["--config", str(Path(self.config_path).resolve())]
            self.children[name] = Child(name, argv)
            tasks.append(asyncio.create_task(self._watch(self.children[name])))
        if self.config.web.enabled:
            argv = [sys.executable, "-m", "services.web"]
            if self.config_path:
                argv += ["--config", str(Path(self.config_path).resolve())]
            self.children["web"] = Child("web", argv)
            tasks.append(asyncio.create_task(self._watch(self.children["web"])))
        log.info("node up", node=self.config.node, nats=self.config.nats.url,
                 context=str(self.config.credentials_path(natsserver.ADMIN)))
        await self._stopping.wait()
        log.info("stopping node")
        await self.bus.drain()
        await self._stop_children()
        # Each watch returns once its child is gone, stopping one it started meanwhile; only
        # then is the node down (a purge waits for the pid file to go).
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE + 5)
        for t in tasks:
            t.cancel()
        pid_path(self.config).unlink(missing_ok=True)
        log.info("node stopped")
        return 0

    async def _stop_children(self) -> None:
        """Services first (they drain their bus), nats-server last."""
        services = [c for n, c in self.children.items() if n != "nats"]
        await asyncio.gather(*(self._stop_one(c) for c in services))
        if "nats" in self.children:
            await self._stop_one(self.children["nats"])

    async def _stop_one(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=STOP_GRACE)
        except asyncio.TimeoutError:
            log.warning("did not stop in time, killing", child=child.name)
            proc.kill()
            await proc.wait()
