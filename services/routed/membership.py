"""Which peers are alive, and what this node must hold for them. Pure: routed does the I/O.

A peer is alive while its heartbeat keeps changing: each time its record's `beat` differs
from the last one seen, this node notes the time on its own monotonic clock. So no two
nodes' clocks are ever compared. A peer first seen (or seen again after this routed
restarted) counts as alive for one timeout, and then only if it beats again.

For the alive peers, the node holds a route to each pod CIDR via the peer's underlay address
(native routing) and an ipcache entry for each of its pods: IP -> (identity, node, underlay).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from services.wire.cluster import NodeRecord, RemoteEndpoint


@dataclass(frozen=True)
class RemotePod:
    identity: int
    node: str
    underlay_ip: str            # where a tunnel sends it (ipcache_info.tunnel_endpoint)


@dataclass
class Peer:
    record: NodeRecord
    seen_at: float


class Membership:
    def __init__(self, me: str, timeout: float) -> None:
        self.me = me
        self.timeout = timeout
        self.peers: dict[str, Peer] = {}

    def observe(self, records: dict[str, NodeRecord], now: float) -> None:
        """Take the bucket's records as read at NOW (a complete read: a record gone from it
        is a node that left)."""
        for name in set(self.peers) - set(records):
            del self.peers[name]
        for name, record in records.items():
            if name == self.me:
                continue
            known = self.peers.get(name)
            if known is None or known.record.beat != record.beat:
                self.peers[name] = Peer(record, now)
            else:
                known.record = record

    def alive(self, now: float) -> dict[str, NodeRecord]:
        return {n: p.record for n, p in self.peers.items() if now - p.seen_at <= self.timeout}

    def age(self, name: str, now: float) -> float | None:
        peer = self.peers.get(name)
        return None if peer is None else now - peer.seen_at


def routes_for(alive: dict[str, NodeRecord], own_cidr: str) -> dict[str, str]:
    """pod CIDR -> underlay IP of each alive peer; a CIDR overlapping our own is refused
    (it would take our pods' addresses), and so is one two peers both claim."""
    own = ipaddress.IPv4Network(own_cidr)
    out: dict[str, str] = {}
    claimed: dict[str, int] = {}
    for record in alive.values():
        claimed[record.pod_cidr] = claimed.get(record.pod_cidr, 0) + 1
    for record in alive.values():
        net = ipaddress.IPv4Network(record.pod_cidr)
        if net.overlaps(own) or claimed[record.pod_cidr] > 1:
            continue
        if any(net.overlaps(ipaddress.IPv4Network(c)) for c in claimed if c != record.pod_cidr):
            continue
        out[record.pod_cidr] = record.underlay_ip
    return out


def pods_for(alive: dict[str, NodeRecord], endpoints: list[RemoteEndpoint],
             routes: dict[str, str]) -> dict[str, RemotePod]:
    """ip/32 -> RemotePod for each pod of an alive peer, inside that peer's routed CIDR."""
    out = {}
    for ep in endpoints:
        record = alive.get(ep.node)
        if record is None or record.pod_cidr not in routes:
            continue
        if ipaddress.IPv4Address(ep.ip) not in ipaddress.IPv4Network(record.pod_cidr):
            continue
        out[f"{ep.ip}/32"] = RemotePod(ep.identity, ep.node, record.underlay_ip)
    return out
