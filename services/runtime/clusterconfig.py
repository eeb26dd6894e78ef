"""The node config's `cluster:` section: one node among several on a clustered NATS.

    cluster:
      name: lab                 # the NATS cluster's name; "" (the default): a lone node
      underlayIP: 192.168.50.2  # this node's address on the network between nodes
      routes: [192.168.50.3:6222, 192.168.50.4:6222]   # peers' NATS cluster listeners
      port: 6222                # this node's NATS cluster listener (on underlayIP)
      routing: native           # native | tunnel: how pods reach pods on other nodes
      heartbeatInterval: 2      # seconds between this node's announcements
      heartbeatTimeout: 10      # a peer silent this long is gone (its routes are removed)

The node's name and pod CIDR are the top-level `node` and `podCIDR`. Every node runs its own
nats-server (server name capillary-<node>), routed to the peers named here; services connect
with every server: their own first, then each peer's client port (the same nats.port on
every node). Cluster-wide KV buckets keep `replicas` copies: min(3, nodes) unless set.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

ROUTING = ("native", "tunnel")
MAX_PEERS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")


class ClusterConfigError(ValueError):
    """A cluster section that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Route:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_route(text: object, where: str) -> Route:
    """HOST:PORT (optionally nats-route://HOST:PORT), HOST an IPv4 address."""
    if not isinstance(text, str):
        raise ClusterConfigError(f"{where}: expected HOST:PORT, got {type(text).__name__}")
    bare = text.removeprefix("nats-route://")
    host, sep, port = bare.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise ClusterConfigError(f"{where}: {text!r} is not IPV4:PORT") from None
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ClusterConfigError(f"{where}: {text!r} has no port from 1 to 65535")
    if ip.is_unspecified or ip.is_multicast:
        raise ClusterConfigError(f"{where}: {host} is not a peer's address")
    return Route(str(ip), int(port))


def _positive(value: object, where: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ClusterConfigError(f"{where}: {value!r} is not a whole number from 1 to {upper}")
    return value


@dataclass(frozen=True)
class ClusterConfig:
    name: str = ""
    underlayIP: str = ""
    routes: tuple = ()
    port: int = 6222
    routing: str = "native"
    heartbeatInterval: int = 2
    heartbeatTimeout: int = 10
    replicas: int = 0                      # 0: min(3, number of nodes)
    peers: tuple[Route, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            if self.underlayIP or self.routes:
                raise ClusterConfigError("cluster.name: required when underlayIP or routes are set")
            return
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ClusterConfigError(f"cluster.name: {self.name!r} is not 1-63 letters, digits, '-' or '_'")
        try:
            underlay = ipaddress.IPv4Address(self.underlayIP)
        except ValueError:
            raise ClusterConfigError(f"cluster.underlayIP: {self.underlayIP!r} is not an IPv4 address "
                                     "(required in a cluster)") from None
        if underlay.is_unspecified or underlay.is_loopback or underlay.is_multicast:
            raise ClusterConfigError(f"cluster.underlayIP: {underlay} cannot be reached by other nodes")
        _positive(self.port, "cluster.port", 65535)
        if self.routing not in ROUTING:
            raise ClusterConfigError(f"cluster.routing: {self.routing!r} is not one of {', '.join(ROUTING)}")
        self._check_timing()
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or not 0 <= self.replicas <= 5:
            raise ClusterConfigError(f"cluster.replicas: {self.replicas!r} is not 0 (automatic) to 5")
        object.__setattr__(self, "peers", self._parse_routes(str(underlay)))

    def _check_timing(self) -> None:
        _positive(self.heartbeatInterval, "cluster.heartbeatInterval", 3600)
        _positive(self.heartbeatTimeout, "cluster.heartbeatTimeout", 86400)
        if self.heartbeatTimeout < 2 * self.heartbeatInterval:
            raise ClusterConfigError(
                f"cluster.heartbeatTimeout: {self.heartbeatTimeout}s must be at least twice "
                f"heartbeatInterval ({self.heartbeatInterval}s), or one late heartbeat drops a node")

    def _parse_routes(self, underlay: str) -> tuple[Route, ...]:
        if not isinstance(self.routes, (list, tuple)):
            raise ClusterConfigError("cluster.routes: expected a list of HOST:PORT")
        if len(self.routes) > MAX_PEERS:
            raise ClusterConfigError(f"cluster.routes: {len(self.routes)} routes, over the limit of {MAX_PEERS}")
        peers = tuple(parse_route(r, f"cluster.routes[{i}]") for i, r in enumerate(self.routes))
        own = Route(underlay, self.port)
        if own in peers:
            raise ClusterConfigError(f"cluster.routes: {own} is this node's own cluster listener")
        if len(set(peers)) != len(peers):
            raise ClusterConfigError("cluster.routes: a route is listed twice")
        return peers

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    @property
    def size(self) -> int:
        """The nodes this one knows of: itself and one per route."""
        return 1 + len(self.peers)

    @property
    def kv_replicas(self) -> int:
        """Copies of each cluster-wide KV bucket: 3 with three or more nodes (NATS allows
        1 to 5), never more than the nodes there are."""
        if not self.enabled:
            return 1
        return min(self.replicas or 3, self.size)
