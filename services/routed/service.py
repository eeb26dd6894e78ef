"""routed: the router device, pod routes, iptables coexistence, and the ipcache.

The ipcache map is the record of truth for the claims in force: it is pinned, so it survives
a restart, and each entry's flags hold its source. Claims a higher one shadows (services.routed.
claims) are kept in {stateDir}/routed/ipcache-shadowed.json, written whenever they change.
routed re-reads both at start-up and only adds what is missing (reserved world and host
entries) or stale (host addresses that went away).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from pathlib import Path

from prometheus_client import Gauge

from services.datapath import loader
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.netlink import Netlink, Worker
from services.datapath.numbers import IDENTITY_HOST, IDENTITY_WORLD
from services.datapath.pinned import MapFull
from services.routed import iptables
from services.routed.claims import Claim, Claims
from services.routed.cluster import ClusterAgent
from services.routed.router import ensure_router
from services.runtime.app import Service
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.messages import (EXHAUSTED, INVALID, IpcacheDelete, IpcacheEntry,
                                    IpcacheUpsert, ListRequest)

# Sources, stored in ipcache_info.flags.
SOURCES = {"reserved": 1, "node": 2, "endpoint": 3, "cidr-policy": 4, "remote": 5}
SOURCE_NAMES = {v: k for k, v in SOURCES.items()}
HOST_REFRESH_SECONDS = 10


class RoutedService(Service):
    NAME = "routed"

    async def start(self) -> None:
        self.worker = Worker()
        self.nl = Netlink()
        self.entries_gauge = Gauge("capillary_ipcache_entries", "Entries in the ipcache map",
                                   registry=self.registry)
        Gauge("capillary_ipcache_capacity", "Entries the ipcache map can hold (maps.ipcache)",
              registry=self.registry).set(self.config.maps.ipcache)
        await self.worker.run(loader.pin_maps, "routed_maps.c", self.config)       # LLVM stays out
        self.ipcache = IpcacheMap(Path(self.config.datapath.bpfRoot))
        await self.worker.run(ensure_router, self.nl, self.config)
        await self.worker.run(iptables.ensure, self.config.podCIDR,
                              self.config.datapath.routerDevice, self.config.masquerade)
        self._lock = asyncio.Lock()
        async with self._lock:
            self._load_claims()
            self._set("0.0.0.0/0", "reserved", IDENTITY_WORLD)
            await self._refresh_host_entries()
            self._save_shadowed()
        self._refresher = asyncio.create_task(self._refresh_loop())
        self.cluster = None
        if self.config.cluster.enabled:
            self.cluster = ClusterAgent(self, self.bus, self.config)
            await self.cluster.start()
            await self.bus.serve(subjects.NODES_LIST, ListRequest, self.list_nodes)
        await self.bus.serve(subjects.IPCACHE_UPSERT, IpcacheUpsert, self.upsert)
        await self.bus.serve(subjects.IPCACHE_DELETE, IpcacheDelete, self.delete)
        await self.bus.serve(subjects.IPCACHE_LIST, ListRequest, self.list)

    async def stop(self) -> None:
        if getattr(self, "cluster", None):
            await self.cluster.stop()
        if hasattr(self, "_refresher"):
            self._refresher.cancel()
        if hasattr(self, "worker"):
            self.worker.close()

    async def counters(self) -> dict[str, int]:
        return {"ipcache_entries": len(self.ipcache.all()), "ipcache_capacity": self.config.maps.ipcache}

    # ---- claims: every source's, the highest in the map -----------------------------------------

    @property
    def _shadowed_path(self) -> Path:
        return self.config.state_path / "routed" / "ipcache-shadowed.json"

    def _load_claims(self) -> None:
        """The claims in force from the map, the shadowed ones from their file; the map is
        then brought in line (a shadowed claim whose map entry went missing is in force)."""
        self.claims = Claims()
        in_map = self._entries()
        for cidr, (identity, source) in in_map.items():
            self.claims.claim(cidr, source, identity)
        try:
            shadowed = json.loads(self._shadowed_path.read_text()) if self._shadowed_path.exists() else []
            for cidr, source, identity in shadowed:
                if source not in SOURCES:
                    raise ValueError(f"unknown source {source!r}")
                self.claims.claim(_cidr(cidr), source, int(identity))
        except (OSError, ValueError, TypeError, ServiceError) as exc:
            raise RuntimeError(f"cannot read the shadowed ipcache claims {self._shadowed_path}: {exc}") from None
        for cidr in {c for c, _s, _i in shadowed}:
            before = in_map.get(cidr)
            self._write(cidr, before and Claim(before[1], before[0]), self.claims.winner(cidr))
        self._saved = self.claims.shadowed()

    def _save_shadowed(self) -> None:
        now = self.claims.shadowed()
        if now == self._saved:
            return
        path = self._shadowed_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(now, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._saved = now

    def _write(self, cidr: str, before: Claim | None, after: Claim | None) -> None:
        if after is None:
            self.ipcache.delete(cidr)
        elif after != before:
            self.ipcache.upsert(cidr, after.identity, SOURCES[after.source])

    def _set(self, cidr: str, source: str, identity: int | None) -> Claim | None:
        """SOURCE claims CIDR as IDENTITY (None: releases it); the map follows the winner.
        On a map error the claims are as they were."""
        before = self.claims.winner(cidr)
        old = self.claims.sources(cidr).get(source)
        after = self.claims.release(cidr, source) if identity is None else self.claims.claim(cidr, source, identity)
        try:
            self._write(cidr, before, after)
        except BaseException:
            if old is None:
                self.claims.release(cidr, source)
            else:
                self.claims.claim(cidr, source, old)
            raise
        return after

    # ---- for services.routed.cluster ------------------------------------------------------------

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    def set_claim(self, cidr: str, source: str, identity: int | None) -> None:
        """As _set; the caller holds the lock and calls after_change() once done."""
        self._set(cidr, source, identity)

    def after_change(self) -> None:
        self._save_shadowed()
        self.entries_gauge.set(len(self.ipcache.all()))

    async def list_nodes(self, _req: ListRequest) -> list[dict]:
        return self.cluster.status(time.monotonic())

    async def _refresh_host_entries(self) -> None:
        """Every local address is the host identity; addresses that went away are removed."""
        local = await self.worker.run(self.nl.local_ipv4)
        local.add(str(self.config.router_ip))
        wanted = {f"{ip}/32" for ip in local}
        current = self.claims.of_source("node")
        for cidr in wanted - current:
            self._set(cidr, "node", IDENTITY_HOST)
        for cidr in current - wanted:
            self._set(cidr, "node", None)
        self._save_shadowed()
        self.entries_gauge.set(len(self.ipcache.all()))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(HOST_REFRESH_SECONDS)
            async with self._lock:
                try:
                    await self._refresh_host_entries()
                except Exception:
                    self.log.exception("host address refresh failed")

    def _entries(self) -> dict[str, tuple[int, str]]:
        out = {}
        for k, v in self.ipcache.map.items():
            cidr = f"{ipaddress.IPv4Address(bytes(k.ip))}/{k.prefixlen}"
            out[cidr] = (v.identity, SOURCE_NAMES.get(v.flags, "unknown"))
        return out

    async def upsert(self, req: IpcacheUpsert) -> IpcacheEntry:
        cidr = _cidr(req.cidr)
        if req.source not in ("endpoint", "cidr-policy"):
            raise ServiceError(INVALID, f"source: {req.source!r} is not endpoint or cidr-policy")
        if req.identity <= 0 or req.identity > 0xFFFFFFFF:
            raise ServiceError(INVALID, f"identity: {req.identity} is out of range")
        async with self._lock:
            try:
                now = self._set(cidr, req.source, req.identity)
            except MapFull:
                raise ServiceError(EXHAUSTED, f"ipcache map is full ({self.config.maps.ipcache} entries, "
                                              "maps.ipcache in the node config)") from None
            self._save_shadowed()
            self.entries_gauge.set(len(self.ipcache.all()))
        return IpcacheEntry(cidr, now.identity, now.source)

    async def delete(self, req: IpcacheDelete) -> dict:
        """Release REQ.source's claim; the next claim down, if any, comes into force."""
        cidr = _cidr(req.cidr)
        async with self._lock:
            claims = self.claims.sources(cidr)
            if claims and req.source not in claims:
                raise ServiceError(INVALID, f"{cidr} belongs to source {self.claims.winner(cidr).source}, "
                                            f"not {req.source}")
            if req.source in claims:
                self._set(cidr, req.source, None)
                self._save_shadowed()
            self.entries_gauge.set(len(self.ipcache.all()))
        return {"removed": req.source in claims}

    async def list(self, _req: ListRequest) -> list[IpcacheEntry]:
        return [IpcacheEntry(cidr, ident, src) for cidr, (ident, src) in sorted(self._entries().items())]


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise ServiceError(INVALID, f"cidr: {exc}") from None
