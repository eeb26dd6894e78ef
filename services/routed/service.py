"""routed: the router device, pod routes, iptables coexistence, and the ipcache.

The ipcache map is the record of truth for the claims in force: it is pinned, so it survives
a restart, and each entry's flags hold its source. Claims a higher one shadows (services.routed.
claims) are kept in JetStream KV (services.routed.shadowed), written whenever they change.
routed re-reads both at start-up and only adds what is missing (reserved world and host
entries) or stale (host addresses that went away).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import Gauge

from services.datapath import loader
from services.datapath.maps import ipcache
from services.datapath.map_metrics import MapOpsCollector, MapPressureCollector
from services.datapath.maps.ipcache import PIN_NAME as IPCACHE_PIN
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.netlink import Netlink, Worker
from services.datapath.numbers import IDENTITY_HOST, IDENTITY_WORLD
from services.datapath.pinned import MapFull
from services.routed import iptables, netdev, tunnel
from services.routed.claims import Claim, Claims
from services.routed.cluster import ClusterAgent
from services.routed.router import ensure_router
from services.routed.shadowed import ShadowStore
from services.runtime.app import Service
from services.runtime.bus import ServiceError
from services.runtime.supervisor import leaving_path
from services.wire import prefix, subjects
from services.wire.messages import (EXHAUSTED, INVALID, IPCACHE_BATCH_MAX, IpcacheBatch, IpcacheBatchDone,
                                    IpcacheDelete, IpcacheEntry, IpcacheUpsert, ListRequest)

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
        root = Path(self.config.datapath.bpfRoot)
        upgrading = await self.worker.run(ipcache.set_aside_old_layout, root)
        await self.worker.run(loader.pin_maps, "routed_maps.c", self.config)       # LLVM stays out
        if upgrading:
            copied = await self.worker.run(ipcache.restore_old_layout, root)
            self.log.info("ipcache upgraded to the tunnel_endpoint layout", entries=copied)
        self.ipcache = IpcacheMap(root)
        self.registry.register(MapOpsCollector())
        self.registry.register(MapPressureCollector(
            {IPCACHE_PIN: (lambda: len(self.claims), self.config.maps.ipcache)}))
        await self.worker.run(ensure_router, self.nl, self.config)
        await self.worker.run(iptables.ensure, self.config.podCIDR,
                              self.config.datapath.routerDevice, self.config.masquerade)
        self._lock = asyncio.Lock()
        self.shadow = ShadowStore(self.bus, self.config.cluster.kv_replicas,
                                  self.config.state_path / "routed" / "ipcache-shadowed.json")
        self.shadow_unsaved = 0
        async with self._lock:
            await self._load_claims()
            self._set("0.0.0.0/0", "reserved", IDENTITY_WORLD)
            await self._refresh_host_entries()
        self._refresher = asyncio.create_task(self._refresh_loop())
        self.cluster = None
        if self.config.cluster.enabled:
            self.cluster = ClusterAgent(self, self.bus, self.config)
            await self.cluster.start()
            await self.bus.serve(subjects.NODES_LIST, ListRequest, self.list_nodes)
        await self.bus.serve(subjects.IPCACHE_UPSERT, IpcacheUpsert, self.upsert)
        await self.bus.serve(subjects.IPCACHE_DELETE, IpcacheDelete, self.delete)
        await self.bus.serve(subjects.IPCACHE_LIST, ListRequest, self.list)
        await self.bus.serve(subjects.IPCACHE_BATCH, IpcacheBatch, self.batch)

    async def stopping(self) -> None:
        if getattr(self, "cluster", None) and leaving_path(self.config).exists():
            await self.cluster.leave()

    async def stop(self) -> None:
        if getattr(self, "cluster", None):
            await self.cluster.stop()
            if self.cluster.tunnel:
                await self._untracked_no_more()
        if hasattr(self, "_refresher"):
            self._refresher.cancel()
        if hasattr(self, "worker"):
            self.worker.close()

    async def _untracked_no_more(self) -> None:
        """The node goes down: its no-track rule goes (services.routed.iptables). The VXLAN
        device stays, so pods' connections across nodes live on meanwhile (tracked)."""
        try:
            await self.worker.run(iptables.remove_notrack, tunnel.PORT)
        except iptables.IptablesError as exc:
            self.log.warning("could not remove the overlay's no-track rule", error=str(exc))

    async def counters(self) -> dict[str, int]:
        return {"ipcache_entries": len(self.claims), "ipcache_capacity": self.config.maps.ipcache,
                "ipcache_shadowed_unsaved": self.shadow_unsaved}

    # ---- claims: every source's, the highest in the map -----------------------------------------

    async def _load_claims(self) -> None:
        """The claims in force from the map, the shadowed ones from KV; the map is then
        brought in line (a shadowed claim whose map entry went missing is in force)."""
        self.claims = Claims()
        in_map = self._entries()
        for cidr, claim in in_map.items():
            self.claims.claim(cidr, claim.source, claim.identity, claim.tunnel_endpoint)
        try:
            shadowed = await self.shadow.load()
            for cidr, source, identity, *tunnel in shadowed:
                if source not in SOURCES or len(tunnel) > 1:
                    raise ValueError(f"bad entry for {cidr}")
                self.claims.claim(_cidr(cidr), source, int(identity), *map(str, tunnel))
        except (OSError, ValueError, TypeError, ServiceError) as exc:
            raise RuntimeError(f"cannot read the shadowed ipcache claims: {exc}") from None
        for cidr in {c for c, *_ in shadowed}:
            self._write(cidr, in_map.get(cidr), self.claims.winner(cidr))

    async def _save_shadowed(self) -> None:
        """Shadowed claims to KV. A write that fails keeps what is in force and is reported
        (status counters, log) until a later save, at the latest the next host refresh."""
        unsaved = await self.shadow.save(self.claims.shadowed())
        if unsaved and not self.shadow_unsaved:
            self.log.error("shadowed ipcache claims not stored; retrying", prefixes=unsaved)
        elif self.shadow_unsaved and not unsaved:
            self.log.info("shadowed ipcache claims stored again")
        self.shadow_unsaved = unsaved

    def _write(self, cidr: str, before: Claim | None, after: Claim | None) -> None:
        if after is None:
            self.ipcache.delete(cidr)
        elif after != before:
            self.ipcache.upsert(cidr, after.identity, SOURCES[after.source], after.tunnel_endpoint)

    def _set(self, cidr: str, source: str, identity: int | None, tunnel_endpoint: str = "") -> Claim | None:
        """SOURCE claims CIDR as IDENTITY (None: releases it), behind TUNNEL_ENDPOINT when
        set; the map follows the winner. On a map error the claims are as they were."""
        before = self.claims.winner(cidr)
        old = self.claims.get(cidr, source)
        after = (self.claims.release(cidr, source) if identity is None else
                 self.claims.claim(cidr, source, identity, tunnel_endpoint))
        try:
            self._write(cidr, before, after)
        except BaseException:
            if old is None:
                self.claims.release(cidr, source)
            else:
                self.claims.claim(cidr, source, old.identity, old.tunnel_endpoint)
            raise
        return after

    # ---- for services.routed.cluster ------------------------------------------------------------

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    def set_claim(self, cidr: str, source: str, identity: int | None, tunnel_endpoint: str = "") -> None:
        """As _set; the caller holds the lock and calls after_change() once done."""
        self._set(cidr, source, identity, tunnel_endpoint)

    async def after_change(self) -> None:
        await self._save_shadowed()
        self.entries_gauge.set(len(self.claims))

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
        await self._save_shadowed()
        self.entries_gauge.set(len(self.claims))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(HOST_REFRESH_SECONDS)
            async with self._lock:
                try:
                    await self._refresh_host_entries()
                except Exception:
                    self.log.exception("host address refresh failed")

    def _entries(self) -> dict[str, Claim]:
        return {ipcache.cidr_of(k): Claim(SOURCE_NAMES.get(v.flags, "unknown"), v.identity,
                                          ipcache.tunnel_endpoint_of(v))
                for k, v in self.ipcache.map.items()}

    # ---- pods on other nodes (tunnel and native routing) -------------------------------------

    async def ensure_tunnel(self) -> int:
        """Tunnel mode: the VXLAN device up with from_overlay at its ingress, and the datapath
        told its ifindex (services.routed.tunnel.ensure). Returns the ifindex."""
        return await self.worker.run(tunnel.ensure, self.nl, self.config)

    async def ensure_netdev(self) -> int:
        """Native routing: from_netdev at the underlay device's ingress, or none with
        datapath.hostLegacyRouting (services.routed.netdev.ensure); with datapath.bigTCP the
        device takes the pods' BIG TCP packets (netdev.big_tcp). Returns the ifindex."""
        index = await self.worker.run(netdev.ensure, self.nl, self.config)
        why = await self.worker.run(netdev.big_tcp, self.nl, self.config)
        if why:
            self.log.warning("underlay device without BIG TCP", reason=why)
        return index

    async def remove_tunnel(self) -> None:
        """Out of tunnel mode: what would be encapsulated is dropped, the device removed."""
        await self.worker.run(tunnel.remove_device, self.nl, self.config)

    async def upsert_remote(self, pod_ip: str, identity: int, node_ip: str) -> Claim:
        """A pod on another node: POD_IP (an address or a /32) is IDENTITY, reached through
        the overlay at NODE_IP (its node's underlay address; "" in native routing, where
        the kernel's routes carry it). Returns the claim now in force (a local claim on the
        same address outranks it). ServiceError INVALID / EXHAUSTED on bad input or a full map."""
        cidr, identity, node_ip = tunnel.remote_entry(pod_ip, identity, node_ip)
        async with self._lock:
            try:
                now = self._set(cidr, tunnel.REMOTE_SOURCE, identity, node_ip)
            except MapFull:
                raise ServiceError(EXHAUSTED, f"ipcache map is full ({self.config.maps.ipcache} entries, "
                                              "maps.ipcache in the node config)") from None
            await self._save_shadowed()
        return now

    async def delete_remote(self, pod_ip: str) -> bool:
        """Forget a pod on another node; True when there was a claim to release."""
        cidr = tunnel.remote_cidr(pod_ip)
        async with self._lock:
            if self.claims.get(cidr, tunnel.REMOTE_SOURCE) is None:
                return False
            self._set(cidr, tunnel.REMOTE_SOURCE, None)
            await self._save_shadowed()
        return True

    def remote_pods(self) -> dict[str, Claim]:
        """Every remote claim, by /32 (in force or shadowed): what a resync compares with."""
        return {c: self.claims.get(c, tunnel.REMOTE_SOURCE) for c in self.claims.of_source(tunnel.REMOTE_SOURCE)}

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
            await self._save_shadowed()
            self.entries_gauge.set(len(self.claims))
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
                await self._save_shadowed()
            self.entries_gauge.set(len(self.claims))
        return {"removed": req.source in claims}

    async def batch(self, req: IpcacheBatch) -> IpcacheBatchDone:
        """One source's claims on many prefixes: checked whole first (a bad prefix or a map
        that could not hold the result changes nothing), then written in map batches. The
        count of entries comes from the claims (one map entry per claimed prefix)."""
        cidrs, released = _batch_input(req)
        async with self._lock:
            gone = {c for c in released if set(self.claims.sources(c)) == {req.source}} - set(cidrs)
            new = {c for c in cidrs if not self.claims.claimed(c)}
            after = len(self.claims) - len(gone) + len(new)
            capacity = self.config.maps.ipcache
            if after > capacity:
                raise ServiceError(EXHAUSTED, f"ipcache map is full: {after} entries needed, room for {capacity} "
                                              "(maps.ipcache in the node config); nothing was changed")
            if req.check:
                return IpcacheBatchDone(len(new), len(gone), len(self.claims), capacity)
            let_go = self._claim_many(req.source, list(zip(cidrs, req.identities)), released)
            await self._save_shadowed()
            self.entries_gauge.set(len(self.claims))
        return IpcacheBatchDone(len(cidrs), let_go, len(self.claims), capacity)

    def _claim_many(self, source: str, claims: list[tuple[str, int]], released: list[str]) -> int:
        """Release SOURCE's claims on RELEASED, then make CLAIMS; the map follows the winners.
        On a map error the claims, and as far as they can be, the map entries are as before."""
        before: dict[str, Claim | None] = {}
        undo: list[tuple[str, Claim | None]] = []
        let_go = 0
        for cidr in released:
            old = self.claims.get(cidr, source)
            if old is not None:
                before.setdefault(cidr, self.claims.winner(cidr))
                undo.append((cidr, old))
                self.claims.release(cidr, source)
                let_go += 1
        for cidr, identity in claims:
            before.setdefault(cidr, self.claims.winner(cidr))
            undo.append((cidr, self.claims.get(cidr, source)))
            self.claims.claim(cidr, source, identity)
        try:
            self._write_many({c: (b, self.claims.winner(c)) for c, b in before.items()})
        except BaseException:
            for cidr, old in reversed(undo):
                if old is None:
                    self.claims.release(cidr, source)
                else:
                    self.claims.claim(cidr, source, old.identity, old.tunnel_endpoint)
            self._write_many({c: (self.claims.winner(c), b) for c, b in before.items()})
            raise
        return let_go

    def _write_many(self, changes: dict[str, tuple[Claim | None, Claim | None]]) -> None:
        """Each prefix's map entry from its BEFORE to its AFTER claim: removals, then writes."""
        self.ipcache.delete_many([c for c, (b, a) in changes.items() if a is None and b is not None])
        try:
            self.ipcache.upsert_many([(c, a.identity, SOURCES[a.source], a.tunnel_endpoint)
                                      for c, (b, a) in changes.items() if a is not None and a != b])
        except MapFull:
            raise ServiceError(EXHAUSTED, f"ipcache map is full ({self.config.maps.ipcache} entries, "
                                          "maps.ipcache in the node config)") from None

    async def list(self, _req: ListRequest) -> list[IpcacheEntry]:
        return [IpcacheEntry(cidr, c.identity, c.source, c.tunnel_endpoint)
                for cidr, c in sorted(self._entries().items())]


def _batch_input(req: IpcacheBatch) -> tuple[list[str], list[str]]:
    """REQ's prefixes to claim and to release, canonical; ServiceError naming the field."""
    if req.source not in ("endpoint", "cidr-policy"):
        raise ServiceError(INVALID, f"source: {req.source!r} is not endpoint or cidr-policy")
    if len(req.cidrs) != len(req.identities):
        raise ServiceError(INVALID, f"identities: {len(req.identities)} for {len(req.cidrs)} cidrs")
    if len(req.cidrs) + len(req.released) > IPCACHE_BATCH_MAX:
        raise ServiceError(INVALID, f"cidrs: {len(req.cidrs) + len(req.released)} prefixes is over the "
                                    f"limit of {IPCACHE_BATCH_MAX} in one request (send several)")
    for i, identity in enumerate(req.identities):
        if identity <= 0:
            raise ServiceError(INVALID, f"identities[{i}]: {identity} is out of range")
    return [_cidr(c, f"cidrs[{i}]") for i, c in enumerate(req.cidrs)], \
        [_cidr(c, f"released[{i}]") for i, c in enumerate(req.released)]


def _cidr(text: str, field: str = "cidr") -> str:
    try:
        return prefix.strict(text)
    except ValueError as exc:
        raise ServiceError(INVALID, f"{field}: {exc}") from None
