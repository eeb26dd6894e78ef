"""routed: the router device, pod routes, iptables coexistence, and the ipcache.

The ipcache map is the record of truth for ipcache entries: it is pinned, so it survives a
restart, and each entry's flags hold its source. routed re-reads it at start-up and only adds
what is missing (reserved world and host entries) or stale (host addresses that went away).
"""
from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from prometheus_client import Gauge

from services.datapath import loader
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.netlink import Netlink, Worker
from services.datapath.numbers import IDENTITY_HOST, IDENTITY_WORLD
from services.datapath.pinned import MapFull
from services.routed import iptables
from services.routed.router import ensure_router
from services.runtime.app import Service
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.messages import (EXHAUSTED, INVALID, IpcacheDelete, IpcacheEntry,
                                    IpcacheUpsert, ListRequest)

# Sources, stored in ipcache_info.flags.
SOURCES = {"reserved": 1, "node": 2, "endpoint": 3, "cidr-policy": 4}
SOURCE_NAMES = {v: k for k, v in SOURCES.items()}
HOST_REFRESH_SECONDS = 10


class RoutedService(Service):
    NAME = "routed"

    async def start(self) -> None:
        self.worker = Worker()
        self.nl = Netlink()
        self.entries_gauge = Gauge("capillary_ipcache_entries", "Entries in the ipcache map",
                                   registry=self.registry)
        await self.worker.run(loader.pin_maps, "routed_maps.c", self.config)       # LLVM stays out
        self.ipcache = IpcacheMap(Path(self.config.datapath.bpfRoot))
        await self.worker.run(ensure_router, self.nl, self.config)
        await self.worker.run(iptables.ensure, self.config.podCIDR,
                              self.config.datapath.routerDevice, self.config.masquerade)
        self._lock = asyncio.Lock()
        async with self._lock:
            self.ipcache.upsert("0.0.0.0/0", IDENTITY_WORLD, SOURCES["reserved"])
            await self._refresh_host_entries()
        self._refresher = asyncio.create_task(self._refresh_loop())
        await self.bus.serve(subjects.IPCACHE_UPSERT, IpcacheUpsert, self.upsert)
        await self.bus.serve(subjects.IPCACHE_DELETE, IpcacheDelete, self.delete)
        await self.bus.serve(subjects.IPCACHE_LIST, ListRequest, self.list)

    async def stop(self) -> None:
        if hasattr(self, "_refresher"):
            self._refresher.cancel()
        if hasattr(self, "worker"):
            self.worker.close()

    async def counters(self) -> dict[str, int]:
        return {"ipcache_entries": len(self.ipcache.all())}

    async def _refresh_host_entries(self) -> None:
        """Every local address is the host identity; addresses that went away are removed."""
        local = await self.worker.run(self.nl.local_ipv4)
        local.add(str(self.config.router_ip))
        wanted = {f"{ip}/32" for ip in local}
        current = {cidr for cidr, (_, src) in self._entries().items() if src == "node"}
        for cidr in wanted - current:
            self.ipcache.upsert(cidr, IDENTITY_HOST, SOURCES["node"])
        for cidr in current - wanted:
            self.ipcache.delete(cidr)
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
                self.ipcache.upsert(cidr, req.identity, SOURCES[req.source])
            except MapFull:
                raise ServiceError(EXHAUSTED, f"ipcache map is full ({self.config.maps.ipcache} entries, "
                                              "maps.ipcache in the node config)") from None
            self.entries_gauge.set(len(self.ipcache.all()))
        return IpcacheEntry(cidr, req.identity, req.source)

    async def delete(self, req: IpcacheDelete) -> dict:
        cidr = _cidr(req.cidr)
        async with self._lock:
            entry = self._entries().get(cidr)
            if entry is not None and entry[1] != req.source:
                raise ServiceError(INVALID, f"{cidr} belongs to source {entry[1]}, not {req.source}")
            removed = self.ipcache.delete(cidr)
            self.entries_gauge.set(len(self.ipcache.all()))
        return {"removed": removed}

    async def list(self, _req: ListRequest) -> list[IpcacheEntry]:
        return [IpcacheEntry(cidr, ident, src) for cidr, (ident, src) in sorted(self._entries().items())]


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise ServiceError(INVALID, f"cidr: {exc}") from None
