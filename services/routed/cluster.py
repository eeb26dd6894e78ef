"""routed in a cluster: announce this node, learn the others, hold their routes and pods.

Every heartbeatInterval this node rewrites its record in capillary_nodes (a new `beat`), makes
capillary_endpoints hold exactly its own pods, reads both buckets whole, and brings the kernel
in line with services.routed.membership: a route to each alive peer's pod CIDR via the peer's
underlay address (native routing), an ipcache entry (source "remote") for each of its pods,
which in tunnel mode names the peer's underlay address as its tunnel endpoint, so that
from_container encapsulates to it through the VXLAN device (services.routed.tunnel), and, in
tunnel mode, the alive peers' underlay addresses in cap_tunnel_peers: the only senders whose
VXLAN packets this node takes in (their VNI is believed as the source identity).
A read that fails changes nothing: the last known state stays until a read succeeds (an
unreadable bucket is unknown, never empty). Routes this node made carry protocol
RTPROT_CAPILLARY, so a restart finds and reconciles them.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from services.datapath.maps.tunnel import TunnelPeersMap
from services.routed.membership import Membership, RemotePod, pods_for, routes_for
from services.runtime.bus import Bus, StateUnreadable
from services.runtime.config import NodeConfig
from services.wire import codec, subjects
from services.wire.cluster import NodeRecord, RemoteEndpoint, endpoint_key
from services.wire.messages import SchemaError


LEAVE_TIMEOUT = 5.0         # seconds for a leaving node to take its keys out (the supervisor waits 10)


async def forget(bus: Bus, kv_nodes, kv_endpoints, node: str) -> bool:
    """Take NODE's record and its pods out of the shared buckets; False when it had none."""
    endpoints = await bus.kv_items(kv_endpoints)
    for key in endpoints:
        if key.startswith(f"{node}."):
            await kv_endpoints.purge(key)
    if node not in await bus.kv_items(kv_nodes):
        return False
    await kv_nodes.purge(node)
    return True


class ClusterAgent:
    def __init__(self, routed, bus: Bus, config: NodeConfig) -> None:
        self.routed = routed            # the RoutedService: its claims, lock, netlink worker
        self.bus = bus
        self.config = config
        self.cluster = config.cluster
        self.membership = Membership(config.node, config.cluster.heartbeatTimeout)
        self.beat = 0
        self.started = time.time()
        self.routes: dict[str, str] = {}            # pod CIDR -> underlay IP, in the kernel
        # ip/32 -> (identity, tunnel endpoint) in the ipcache: the endpoint is the underlay
        # address of the pod's node in tunnel mode, "" in native mode
        self.remote: dict[str, tuple[int, str]] = {}
        self.peers: TunnelPeersMap | None = None    # opened by start()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        replicas = self.cluster.kv_replicas
        self.kv_nodes = await self.bus.kv(subjects.BUCKET_NODES, create=True, replicas=replicas)
        self.kv_endpoints = await self.bus.kv(subjects.BUCKET_CLUSTER_ENDPOINTS, create=True, replicas=replicas)
        if self.tunnel:
            await self.routed.ensure_tunnel()
        await self.routed.ensure_netdev()           # tunnel mode: it decapsulates too
        self.peers = TunnelPeersMap(Path(self.config.datapath.bpfRoot))
        self.routes = await self.routed.worker.run(self.routed.nl.cluster_routes)
        self.remote = {cidr: (claim.identity, claim.tunnel_endpoint) for cidr in self.routed.claims.of_source("remote")
                       for claim in [self.routed.claims.get(cidr, "remote")]}
        self._task = asyncio.create_task(self._loop())

    @property
    def tunnel(self) -> bool:
        return self.cluster.routing == "tunnel"

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.peers:
            self.peers.close()
            self.peers = None

    async def leave(self) -> None:
        """This node leaves the cluster for good (it is being purged): its heartbeat stops and
        its record and its pods go from the shared buckets, so every other node forgets it
        at once (services.routed.membership: a record gone is a node that left) instead of
        listing it NotReady for ever. A failure is logged: the record then stays, NotReady."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self._forget(), LEAVE_TIMEOUT)
            self.routed.log.info("left the cluster: node record and pods removed", node=self.config.node)
        except (StateUnreadable, asyncio.TimeoutError, NatsError, JetStreamError) as exc:
            self.routed.log.warning("could not remove this node from the cluster", error=str(exc))

    async def _forget(self) -> None:
        await forget(self.bus, self.kv_nodes, self.kv_endpoints, self.config.node)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except StateUnreadable as exc:
                self.routed.log.warning("cluster state unreadable, nothing changed", error=exc.message)
            except Exception:
                self.routed.log.exception("cluster round failed")
            await asyncio.sleep(self.cluster.heartbeatInterval)

    def record(self) -> NodeRecord:
        return NodeRecord(self.config.node, self.cluster.underlayIP, self.config.podCIDR, self.cluster.routing,
                          self.beat, self.started, time.time())

    async def tick(self) -> None:
        self.beat = (self.beat + 1) & 0xFFFFFFFF
        await self.kv_nodes.put(self.config.node, codec.encode(self.record().to_wire()))
        nodes = await self.bus.kv_items(self.kv_nodes)
        endpoints = await self.bus.kv_items(self.kv_endpoints)
        await self._publish_own(endpoints)
        records = {}
        for key, raw in nodes.items():
            try:
                records[key] = NodeRecord.from_wire(raw)
            except SchemaError as exc:
                self.routed.log.warning("bad node record ignored", node=key, error=str(exc))
        self.membership.observe(records, time.monotonic())
        alive = self.membership.alive(time.monotonic())
        routes = routes_for(alive, self.config.podCIDR) if self.cluster.routing == "native" else {}
        remote = [RemoteEndpoint.from_wire(v) for k, v in endpoints.items()
                  if not k.startswith(f"{self.config.node}.")]
        tunnel_routes = routes_for(alive, self.config.podCIDR)
        self._apply_peers({record.underlay_ip for record in alive.values()} if self.tunnel else set())
        await self._apply(routes, pods_for(alive, remote, tunnel_routes))

    def _apply_peers(self, wanted: set[str]) -> None:
        """cap_tunnel_peers holds exactly WANTED (the alive peers' underlay addresses)."""
        held = self.peers.peers()
        for ip in sorted(wanted - held):
            self.peers.add(ip)
            self.routed.log.info("tunnel peer: its VXLAN packets are taken in", underlay_ip=ip)
        for ip in sorted(held - wanted):
            self.peers.remove(ip)
            self.routed.log.info("tunnel peer removed: its VXLAN packets are dropped", underlay_ip=ip)

    async def _publish_own(self, endpoints: dict[str, dict]) -> None:
        """capillary_endpoints holds exactly this node's endpoint claims."""
        mine = {}
        for cidr in self.routed.claims.of_source("endpoint"):
            ip = cidr.split("/")[0]
            mine[endpoint_key(self.config.node, ip)] = RemoteEndpoint(ip, self.routed.claims.sources(cidr)["endpoint"],
                                                                      self.config.node)
        stored = {k: v for k, v in endpoints.items() if k.startswith(f"{self.config.node}.")}
        for key, ep in mine.items():
            if stored.get(key) != ep.to_wire():
                await self.kv_endpoints.put(key, codec.encode(ep.to_wire()))
        for key in set(stored) - set(mine):
            await self.kv_endpoints.delete(key)

    async def _apply(self, routes: dict[str, str], pods: dict[str, RemotePod]) -> None:
        nl, worker = self.routed.nl, self.routed.worker
        for cidr, via in routes.items():
            if self.routes.get(cidr) != via:
                await worker.run(nl.replace_cluster_route, cidr, via)
                self.routed.log.info("route to a node's pods", cidr=cidr, via=via)
        for cidr in set(self.routes) - set(routes):
            await worker.run(nl.delete_route, cidr)
            self.routed.log.info("route to a node's pods removed", cidr=cidr)
        self.routes = routes
        wanted = {cidr: (pod.identity, pod.underlay_ip if self.tunnel else "") for cidr, pod in pods.items()}
        async with self.routed.lock:
            for cidr, (identity, endpoint) in wanted.items():
                if self.remote.get(cidr) != (identity, endpoint):
                    self.routed.set_claim(cidr, "remote", identity, endpoint)
            for cidr in set(self.remote) - set(wanted):
                self.routed.set_claim(cidr, "remote", None)
            self.remote = wanted
            await self.routed.after_change()

    def status(self, now: float) -> list[dict]:
        """Every known node with its health, for `capillary get nodes`."""
        alive = self.membership.alive(now)
        out = [{"name": self.config.node, "underlay_ip": self.cluster.underlayIP, "pod_cidr": self.config.podCIDR,
                "routing": self.cluster.routing, "healthy": True, "heartbeat_age": 0.0, "self": True}]
        for name, peer in sorted(self.membership.peers.items()):
            out.append({"name": name, "underlay_ip": peer.record.underlay_ip, "pod_cidr": peer.record.pod_cidr,
                        "routing": peer.record.routing, "healthy": name in alive,
                        "heartbeat_age": round(now - peer.seen_at, 1), "self": False,
                        "routed": peer.record.pod_cidr in self.routes})
        return out


