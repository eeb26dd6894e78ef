"""Node configuration: one YAML file, frozen dataclasses that validate themselves.

The file holds ``kind: NodeConfig`` (capillary's own knobs) and may also hold the
``kind: CiliumConfig`` shorthand, whose fields map onto the same knobs:

    spec.eBPFPrograms.optimize   true  -> datapath.mode: redirect (bpf_redirect_peer)
                                 false -> datapath.mode: host-stack
    spec.networkBuffers.size     bytes per event buffer page   } events.ringBytes =
    spec.networkBuffers.count    number of pages               }   size * count
    spec.security.enable         false -> policy.enforcement: never

Every field has a default that works on a fresh node, so an empty file is a valid config.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.runtime.clusterconfig import ClusterConfig, ClusterConfigError
from services.wire.hubble_options import METRICS as HUBBLE_METRICS
from services.wire.hubble_options import MetricSpec, parse_metrics
from services.wire.limits import LimitError, load_yaml_all, read_text

ADMIN = "admin"       # the NATS user with every permission: operators (the CLI)

DEFAULT_CONFIG_PATH = Path("/etc/capillary/config.yaml")
CONFIG_ENV = "CAPILLARY_CONFIG"
MODES = ("redirect", "host-stack")
ENFORCEMENT = ("default", "always", "never")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
BPFFS = "/sys/fs/bpf/"
# Pod addresses come from private space only: a pod CIDR such as 0.0.0.0/1 or 224.0.0.0/4
# would capture (or route into pods) addresses that belong to the world.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in
                       ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# `down --purge` deletes stateDir recursively: never one of these, nor anything above them.
_SYSTEM_DIRS = frozenset({"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media",
                          "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
                          "/tmp", "/usr", "/var", "/var/lib", "/var/run", "/var/tmp", "/var/log",
                          "/usr/lib", "/usr/local", "/usr/share", "/run/netns", "/sys/fs/bpf"})


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class DatapathConfig:
    mode: str = "redirect"
    bpfRoot: str = "/sys/fs/bpf/capillary"
    routerDevice: str = "cap_host"
    routerPeer: str = "cap_net"
    lxcPrefix: str = "lxc"
    conntrackGCInterval: int = 60        # seconds between sweeps of the conntrack map
    # Native cluster routing through the host stack's forwarding (routing, netfilter) instead
    # of BPF host routing (bpf/lib/host_routing.h, from_netdev): Cilium's
    # --enable-host-legacy-routing. For hosts whose own forwarding rules must see pod traffic.
    hostLegacyRouting: bool = False
    # IPv4 BIG TCP (Cilium's --enable-ipv4-big-tcp, Linux 6.3): pods' veths, and in native
    # cluster routing the underlay device, build and take TCP packets of up to 192 KiB instead
    # of 64 KiB, so every per-packet cost on the way is paid a third as often. Not with
    # tunnel routing: a VXLAN packet's outer headers hold at most 64 KiB.
    bigTCP: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"datapath.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        root = self.bpfRoot
        if not root.startswith(BPFFS) or root == BPFFS or not _clean_path(root):
            raise ConfigError(f"datapath.bpfRoot: {root!r} must be a directory under {BPFFS} "
                              "(an absolute path without '.', '..' or empty parts)")
        for name in ("routerDevice", "routerPeer"):
            if not _IFNAME.match(getattr(self, name)):
                raise ConfigError(f"datapath.{name}: not a valid interface name")
        if not re.fullmatch(r"[a-z]{1,4}", self.lxcPrefix):
            raise ConfigError("datapath.lxcPrefix: 1 to 4 lowercase letters")
        for name in ("hostLegacyRouting", "bigTCP"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"datapath.{name}: {getattr(self, name)!r} is not true or false")
        gc = self.conntrackGCInterval
        if isinstance(gc, bool) or not isinstance(gc, int) or not 1 <= gc <= 86400:
            raise ConfigError(f"datapath.conntrackGCInterval: {gc!r} is not a number of seconds from 1 to 86400")


@dataclass(frozen=True)
class MapSizes:
    endpoints: int = 4096
    ipcache: int = 65536
    policy: int = 16384
    conntrack: int = 65536

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or not 16 <= value <= 4_194_304:
                raise ConfigError(f"maps.{f.name}: {value!r} is not a size between 16 and 4194304")


@dataclass(frozen=True)
class EventsConfig:
    ringBytes: int = 4 * 1024 * 1024
    aggregation: str = "medium"        # none | low | medium | maximum, as Cilium's monitor
    history: int = 4095

    def __post_init__(self) -> None:
        rb = self.ringBytes
        if not isinstance(rb, int) or rb < 4096 or rb & (rb - 1):
            raise ConfigError(f"events.ringBytes: {rb!r} must be a power of two >= 4096")
        if self.aggregation not in ("none", "low", "medium", "maximum"):
            raise ConfigError(f"events.aggregation: {self.aggregation!r} is not none|low|medium|maximum")
        if rb > 1 << 30:
            raise ConfigError(f"events.ringBytes: {rb!r} is over the limit of {1 << 30}")
        if not isinstance(self.history, int) or not 1 <= self.history <= 1_000_000:
            raise ConfigError(f"events.history: {self.history!r} must be an integer from 1 to 1000000")


@dataclass(frozen=True)
class PolicyConfig:
    enforcement: str = "default"

    def __post_init__(self) -> None:
        if self.enforcement not in ENFORCEMENT:
            raise ConfigError(f"policy.enforcement: {self.enforcement!r} is not one of {', '.join(ENFORCEMENT)}")


@dataclass(frozen=True)
class HubbleConfig:
    """flowd's Hubble metrics: the ones enabled, each in Hubble's option syntax
    (services.wire.hubble_options), e.g. "flow:sourceContext=namespace;destinationContext=pod"."""

    metrics: list = field(default_factory=lambda: list(HUBBLE_METRICS))

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, list):
            raise ConfigError("hubble.metrics: expected a list of metrics, e.g. [flow, tcp, icmp]")
        try:
            parse_metrics(self.metrics)
        except ValueError as exc:
            raise ConfigError(f"hubble.metrics{exc}") from None

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        return parse_metrics(self.metrics)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reachable(host: str) -> str:
    """Where a client on this machine reaches a listener on HOST (loopback for "any")."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


@dataclass(frozen=True)
class NatsConfig:
    host: str = "127.0.0.1"
    port: int = 4222
    # True: the supervisor does not start nats-server; compose's nats container runs it, from
    # the server.conf capillary writes (cluster block included: services.container run_nats)
    external: bool = False
    tls: bool = False                   # TLS on loopback too (beyond loopback it always is)

    @property
    def loopback(self) -> bool:
        return _loopback(self.host)

    @property
    def tls_enabled(self) -> bool:
        return self.tls or not self.loopback

    @property
    def url(self) -> str:
        """Where this node's own clients connect (loopback when listening on every address)."""
        return f"{'tls' if self.tls_enabled else 'nats'}://{_reachable(self.host)}:{self.port}"

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"nats.port: {self.port!r} is not a port number")
        _check_host(self.host, "nats.host")


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    endpointd: int = 9962
    policyd: int = 9963
    routed: int = 9964
    flowd: int = 9965

    def __post_init__(self) -> None:
        _check_host(self.host, "metrics.host")
        for name in ("endpointd", "policyd", "routed", "flowd"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"metrics.{name}: {port!r} is not a port number")

    def port(self, service: str) -> int:
        return getattr(self, service)


@dataclass(frozen=True)
class WebConfig:
    """The service map page (services/web): where it listens. Every request needs the
    token `capillary web` prints (derived from the admin context), on loopback too; beyond
    loopback the page is served over HTTPS with the node's server certificate (its CA:
    <stateDir>/nats/tls/ca.pem), so the token never crosses a network in clear."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9966

    def __post_init__(self) -> None:
        _check_host(self.host, "web.host")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"web.port: {self.port!r} is not a port number")

    @property
    def loopback(self) -> bool:
        return _loopback(self.host)

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the page."""
        host = _reachable(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'http' if self.loopback else 'https'}://{host}:{self.port}/"


@dataclass(frozen=True)
class DockerConfig:
    """endpointd as Docker's network and IPAM driver (libnetwork's remote driver protocol).

    plugin: the socket to serve, /run/docker/plugins/<driver name>.sock ("": off).
    host: the Docker Engine API endpointd asks for a container's name and labels."""

    plugin: str = ""
    host: str = "unix:///var/run/docker.sock"

    def __post_init__(self) -> None:
        if self.plugin and (not self.plugin.startswith("/") or not self.plugin.endswith(".sock")):
            raise ConfigError(f"docker.plugin: {self.plugin!r} must be an absolute path ending in .sock, "
                              "e.g. /run/docker/plugins/capillary.sock")
        if not self.host.startswith(("unix://", "tcp://")):
            raise ConfigError(f"docker.host: {self.host!r} must be unix://PATH or tcp://HOST:PORT")

    @property
    def driver(self) -> str:
        """The driver's name in `docker network create -d NAME`: the socket's file name."""
        return Path(self.plugin).stem


@dataclass(frozen=True)
class NodeConfig:
    node: str = "node1"
    stateDir: str = "/var/lib/capillary"
    podCIDR: str = "10.200.0.0/16"
    masquerade: bool = False
    datapath: DatapathConfig = field(default_factory=DatapathConfig)
    maps: MapSizes = field(default_factory=MapSizes)
    events: EventsConfig = field(default_factory=EventsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    hubble: HubbleConfig = field(default_factory=HubbleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    web: WebConfig = field(default_factory=WebConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", self.node):
            raise ConfigError(f"node: {self.node!r} is not a DNS label")
        try:
            net = ipaddress.IPv4Network(self.podCIDR, strict=True)
        except ValueError as exc:
            raise ConfigError(f"podCIDR: {exc}") from None
        if net.prefixlen > 29:
            raise ConfigError(f"podCIDR: {self.podCIDR} is too small (at most /29)")
        if not any(net.subnet_of(r) for r in PRIVATE_RANGES):
            raise ConfigError(f"podCIDR: {self.podCIDR} is not inside a private range "
                              f"({', '.join(map(str, PRIVATE_RANGES))})")
        state = self.stateDir.rstrip("/")
        if not _clean_path(state) or any(p.startswith(f"{state}/") or p == state
                                         for p in _SYSTEM_DIRS | {BPFFS.rstrip("/")}):
            raise ConfigError(f"stateDir: {self.stateDir!r} must be an absolute path without '.', '..' or "
                              "empty parts, and not a system directory (down --purge deletes it)")
        if self.cluster.enabled:
            self._check_cluster(net)
            if self.datapath.bigTCP and self.cluster.routing == "tunnel":
                raise ConfigError("datapath.bigTCP: not with cluster.routing: tunnel (a VXLAN packet's outer "
                                  "headers hold at most 64 KiB); use native routing or leave it off")

    def _check_cluster(self, net: ipaddress.IPv4Network) -> None:
        underlay = ipaddress.IPv4Address(self.cluster.underlayIP)
        if underlay in net:
            raise ConfigError(f"cluster.underlayIP: {underlay} is inside podCIDR {net}")
        if self.nats.loopback:
            raise ConfigError(f"nats.host: {self.nats.host} is loopback; in a cluster the other nodes' "
                              f"services must reach it (use cluster.underlayIP {underlay} or 0.0.0.0)")

    # Derived, never configured: the router owns the first address of the pod CIDR.
    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.podCIDR)

    @property
    def router_ip(self) -> ipaddress.IPv4Address:
        return self.pod_network.network_address + 1

    @property
    def state_path(self) -> Path:
        return Path(self.stateDir)

    @property
    def nats_dir(self) -> Path:
        return self.state_path / "nats"

    @property
    def web_token_path(self) -> Path:
        """The service map page's token (natsserver.web_token), mode 0600."""
        return self.nats_dir / "web.token"

    def credentials_path(self, user: str) -> Path:
        """The NATS context file of USER (e.g. ADMIN), written by services.runtime.natsserver."""
        return self.nats_dir / f"{user}.context.json"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _clean_path(path: str) -> bool:
    """An absolute path in normal form, below the root, with no control characters."""
    return (path.startswith("/") and path != "/" and os.path.normpath(path) == path.rstrip("/")
            and path.isprintable())


def _check_host(host: str, where: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ConfigError(f"{where}: {host!r} is not an IP address or a host name") from None


_SECTIONS = {"datapath": DatapathConfig, "maps": MapSizes, "events": EventsConfig,
             "policy": PolicyConfig, "nats": NatsConfig, "metrics": MetricsConfig, "docker": DockerConfig,
             "hubble": HubbleConfig, "cluster": ClusterConfig, "web": WebConfig}


_SCALARS = {"str": str, "int": int, "bool": bool}


def _check_scalar(type_name: str, value: Any, where: str) -> None:
    """Field annotations are strings here (postponed evaluation); bool is not an int."""
    tp = _SCALARS.get(type_name)
    if tp and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {type_name}, got {type(value).__name__}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in types:
            raise ConfigError(f"{where}: unknown field")
        section = _SECTIONS.get(key) if cls is NodeConfig else None
        if not section:
            _check_scalar(types[key], value, where)
        kwargs[key] = _build(section, value, where) if section else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None
    except ClusterConfigError as exc:
        raise ConfigError(str(exc)) from None


def _from_cilium_config(spec: dict) -> dict:
    """Translate the CiliumConfig shorthand into NodeConfig fields."""
    if not isinstance(spec, dict):
        raise ConfigError("CiliumConfig.spec: expected a mapping")
    known = {"eBPFPrograms", "networkBuffers", "security"}
    for key in spec:
        if key not in known:
            raise ConfigError(f"CiliumConfig.spec.{key}: unknown field")
    out: dict = {}
    progs = _shorthand_section(spec, "eBPFPrograms", {"optimize"})
    if "optimize" in progs:
        out.setdefault("datapath", {})["mode"] = "redirect" if progs["optimize"] else "host-stack"
    bufs = _shorthand_section(spec, "networkBuffers", {"size", "count"})
    if bufs:
        size, count = bufs.get("size", 4096), bufs.get("count", 1024)
        if not all(isinstance(v, int) and v > 0 for v in (size, count)):
            raise ConfigError("CiliumConfig.spec.networkBuffers: size and count must be positive integers")
        total = 1 << max(12, (size * count - 1).bit_length())
        out.setdefault("events", {})["ringBytes"] = total
    sec = _shorthand_section(spec, "security", {"enable"})
    if "enable" in sec and not sec["enable"]:
        out.setdefault("policy", {})["enforcement"] = "never"
    return out


def _shorthand_section(spec: dict, name: str, allowed: set[str]) -> dict:
    """spec.NAME as a mapping of known fields; a misspelt field must not pass unnoticed."""
    section = spec.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"CiliumConfig.spec.{name}: expected a mapping")
    for key, value in section.items():
        if key not in allowed:
            raise ConfigError(f"CiliumConfig.spec.{name}.{key}: unknown field")
        if key in ("optimize", "enable") and not isinstance(value, bool):
            raise ConfigError(f"CiliumConfig.spec.{name}.{key}: expected true or false")
    return section


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out.setdefault(key, value)   # explicit NodeConfig values win over the shorthand
    return out


def parse_config(text: str) -> NodeConfig:
    try:
        docs = [d for d in load_yaml_all(text, "config") if d is not None]
    except LimitError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    node: dict = {}
    shorthand: dict = {}
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ConfigError(f"document {i}: expected a mapping")
        kind = doc.get("kind", "NodeConfig")
        if kind == "NodeConfig":
            node = {k: v for k, v in doc.items() if k not in ("kind", "apiVersion")}
        elif kind == "CiliumConfig":
            shorthand = _from_cilium_config(doc.get("spec") or {})
        else:
            raise ConfigError(f"document {i}: kind {kind!r} is not NodeConfig or CiliumConfig")
    return _build(NodeConfig, _merge(node, shorthand), "")


def load_config(path: str | os.PathLike | None = None) -> NodeConfig:
    """Load from PATH, else $CAPILLARY_CONFIG, else /etc/capillary/config.yaml, else defaults."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if chosen is None and DEFAULT_CONFIG_PATH.exists():
        chosen = DEFAULT_CONFIG_PATH
    if chosen is None:
        return NodeConfig()
    try:
        with open(chosen, "rb") as stream:
            text = read_text(stream, f"config {chosen}")
    except OSError as exc:
        raise ConfigError(f"cannot read config {chosen}: {exc.strerror}") from None
    except LimitError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(text)
