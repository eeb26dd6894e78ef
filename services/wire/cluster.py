"""What nodes of a cluster tell each other through KV (routed owns both buckets).

capillary_nodes:      "<node>"        -> NodeRecord, rewritten by its node every heartbeat
capillary_endpoints:  "<node>.<ip>"   -> RemoteEndpoint, one per pod of that node
"""
from __future__ import annotations

from dataclasses import dataclass

from services.wire.limits import IDENTITY, SECONDS, U32
from services.wire.messages import Message


@dataclass(frozen=True)
class NodeRecord(Message):
    KIND = "cluster.node"
    name: str
    underlay_ip: str
    pod_cidr: str
    routing: str                # native | tunnel
    beat: U32                   # counts up with each heartbeat: a new value is a live node
    started: SECONDS = 0.0        # wall clock of the node's routed start (shown, never compared)
    sent: SECONDS = 0.0           # wall clock of this heartbeat (shown, never compared)


@dataclass(frozen=True)
class RemoteEndpoint(Message):
    KIND = "cluster.endpoint"
    ip: str
    identity: IDENTITY
    node: str


def endpoint_key(node: str, ip: str) -> str:
    return f"{node}.{ip}"
