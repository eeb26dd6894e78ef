"""Versioned schemas for every payload on the bus.

A payload is a msgpack map. Requests and events carry ``v`` (schema version) and ``kind``
(message type) next to their fields; replies are ``{"v", "ok": true, "result": ...}`` or
``{"v", "ok": false, "error": {"code", "message"}}``. Decoding rejects unknown fields, wrong
types, integers outside the field they fill (an endpoint id is a u16 in the datapath: 65537
must be refused, not truncated to 1), non-finite floats, input over the bounds of
services.wire.limits and a newer major version, naming the field.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

from services.wire.limits import (COUNT, Range, ENDPOINT_ID, IDENTITY, IFINDEX, INDEX, PID, PORT, SECONDS, U32,
                                  LimitError, check_tree)

SCHEMA_VERSION = 1

M = TypeVar("M", bound="Message")


class SchemaError(ValueError):
    """A payload that does not match its schema; the message names the field."""



# Error codes carried in error replies (and mapped to CLI exit messages).
from services.wire.codes import EXHAUSTED, EXISTS, INTERNAL, INVALID, NOT_FOUND, UNAVAILABLE  # noqa: E402,F401


class Message:
    """Base for wire dataclasses: ``to_wire`` / ``from_wire`` with strict validation."""

    KIND: ClassVar[str] = ""

    def to_wire(self) -> dict:
        out = {"v": SCHEMA_VERSION, "kind": self.KIND} if self.KIND else {}
        for name in _names(type(self)):
            value = getattr(self, name)
            out[name] = value if type(value) in _SCALARS else _to_plain(value)
        return out

    @classmethod
    def from_wire(cls: type[M], data: Any, path: str = "", decoded: bool = False) -> M:
        """DATA checked against CLS's fields. DECODED: DATA is what codec.decode returned,
        whose tree it has bounded already (the bus walks a request once, not twice)."""
        if not isinstance(data, dict):
            raise SchemaError(f"{path or cls.__name__}: expected a map, got {type(data).__name__}")
        if not path and not decoded:
            try:
                check_tree(data, cls.__name__, max_nodes=None)
            except LimitError as exc:
                raise SchemaError(str(exc)) from None
        data = dict(data)
        if cls.KIND:
            version = data.pop("v", None)
            kind = data.pop("kind", None)
            if type(version) is not int or version > SCHEMA_VERSION or version < 1:
                raise SchemaError(f"{_join(path, 'v')}: unsupported schema version {version!r}")
            if kind != cls.KIND:
                raise SchemaError(f"{_join(path, 'kind')}: expected {cls.KIND!r}, got {kind!r}")
        hints, known = _schema(cls)
        for name in data:
            if name not in known:
                shown = name if isinstance(name, str) and name.isidentifier() else repr(name)
                raise SchemaError(f"{_join(path, shown)}: unknown field")
        values = {}
        for name, f in known.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise SchemaError(f"{_join(path, name)}: required field is missing")
                continue
            values[name] = _check(hints[name], data[name], _join(path, name))
        return cls(**values)


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """CLS's field types and fields, worked out once per class: get_type_hints evaluates
    every (postponed, string) annotation again on each call, which made decoding a message
    cost ~100 us; a service decoding a list of 500 pods spent most of its time there."""
    return typing.get_type_hints(cls, include_extras=True), {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    """CLS's field names, worked out once per class (dataclasses.fields() on every to_wire
    made a list of 100,000 identities cost policyd's event loop a second)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


class Plain(list):
    """A list of replies already in wire form (Message.to_wire() of each): a handler that
    answers with 100,000 messages converts them on a worker thread and returns this, which
    the bus sends as it is."""


def _to_plain(value: Any) -> Any:
    if type(value) is Plain:
        return value
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, list):
        return [v if type(v) in _SCALARS else _to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else _to_plain(v) for k, v in value.items()}
    return value


def _plain_items(tp: Any, items: list) -> bool:
    """True when _check(TP) would give every item of ITEMS back as it is: strings for str,
    ints (not bools) in range for int or a Range-annotated int. One quick pass for the long
    lists (ipcache.batch carries 16,384 prefixes); False sends the list through _check item
    by item, which names the item at fault."""
    bounds = None
    if typing.get_origin(tp) is Annotated:
        tp, bounds = typing.get_args(tp)[:2]
    if tp is str and bounds is None:
        return all(type(v) is str for v in items)
    if tp is int:
        low, high = (bounds.low, bounds.high) if isinstance(bounds, Range) else (-math.inf, math.inf)
        return all(type(v) is int and low <= v <= high for v in items)
    return False


def _check(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, bounds = typing.get_args(tp)[:2]
        value = _check(base, value, path)
        if not bounds.low <= value <= bounds.high:
            raise SchemaError(f"{path}: {value} is out of range ({bounds.low}-{bounds.high})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, path)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a map, got {type(value).__name__}")
        return {_check(kt, k, f"{path}.{k}"): _check(vt, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        if _plain_items(it, value):
            return list(value)
        return [_check(it, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and issubclass(tp, Message):
        return tp.from_wire(value, path)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2 ** 63 else math.inf
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise SchemaError(f"{path}: expected {tp.__name__}, got {type(value).__name__}")
    if tp is float and not math.isfinite(value):
        raise SchemaError(f"{path}: {value} is not a finite number")
    return value


# ---- replies -------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorBody(Message):
    code: str
    message: str


def ok_reply(result: Any = None) -> dict:
    return {"v": SCHEMA_VERSION, "ok": True, "result": _to_plain(result)}


def error_reply(code: str, message: str) -> dict:
    return {"v": SCHEMA_VERSION, "ok": False, "error": {"code": code, "message": message}}


# ---- namespaces and pods (endpointd) ---------------------------------------------------


@dataclass(frozen=True)
class NamespaceSpec(Message):
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodSpec(Message):
    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    netns: str | None = None          # adopt this namespace instead of creating one
    audit: bool = False               # policy audit mode for this endpoint (an annotation)
    interface: str = "eth0"           # the pod-side interface name (a CNI runtime's CNI_IFNAME)
    attachment: str = ""              # the runtime's handle, e.g. "cni/<container id>/<ifname>"
    mtu: int = 0                      # 0: the kernel's default
    node_name: str = ""               # spec.nodeName: the node it must land on ("": the one asked)


@dataclass(frozen=True)
class PodStatus(Message):
    pod_ip: str
    host_ifname: str
    host_ifindex: IFINDEX
    host_mac: str
    pod_mac: str
    netns: str                        # path of the pod's network namespace
    netns_owned: bool                 # False when adopted via spec.netns
    endpoint_id: ENDPOINT_ID
    identity: IDENTITY
    created: SECONDS


@dataclass(frozen=True)
class Pod(Message):
    spec: PodSpec
    status: PodStatus


@dataclass(frozen=True)
class PodCheck(Message):
    """The reply to pod.check: every piece of the pod's plumbing that is missing or wrong."""

    pod: str                          # namespace/name
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Apply(Message):
    """namespace.apply / pod.apply: a Kubernetes-style document, validated by its owner.

    create_only: fail with ``exists`` instead of leaving an identical object unchanged.
    """

    KIND = "apply"
    document: dict[str, Any]
    create_only: bool = False


@dataclass(frozen=True)
class Applied(Message):
    """The reply to an apply: what happened (created, unchanged, configured) to which object."""

    kind: str
    name: str
    namespace: str
    action: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PodApplied(Message):
    """The reply to pod.apply: Applied's fields, the pod as it now is, and the router its
    default route goes through (what a CNI ADD reports, without asking again)."""

    kind: str
    name: str
    namespace: str
    action: str
    pod: Pod
    gateway: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectRef(Message):
    """A request naming one object: pod.delete, namespace.delete."""

    KIND = "ref"
    name: str
    namespace: str = ""
    object_kind: str = ""             # for policies: NetworkPolicy, CiliumNetworkPolicy, ...


@dataclass(frozen=True)
class ListRequest(Message):
    KIND = "list"
    namespace: str = ""               # empty: all namespaces


@dataclass(frozen=True)
class EndpointEvent(Message):
    KIND = "endpoint.event"
    pod: Pod


# ---- identities (policyd) ----------------------------------------------------------------


@dataclass(frozen=True)
class IdentityAllocate(Message):
    KIND = "identity.allocate"
    labels: dict[str, str]
    owner: str                        # who holds the reference, e.g. "pod:ns/name"


@dataclass(frozen=True)
class IdentityRelease(Message):
    KIND = "identity.release"
    identity: IDENTITY
    owner: str


@dataclass(frozen=True)
class Identity(Message):
    id: IDENTITY
    labels: dict[str, str]
    owners: list[str] = field(default_factory=list)   # this node's holders
    remote: bool = False              # another node's (a cluster): its holders are not known here


# ---- policies (policyd) -------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointPolicy(Message):
    """policy.endpoint.sync / .forget: an endpoint whose entries policyd computes (before the
    pod's first packet) or removes."""

    KIND = "policy.endpoint"
    endpoint_id: ENDPOINT_ID
    identity: IDENTITY = 0
    audit: bool = False


@dataclass(frozen=True)
class PolicyRule(Message):
    """policy.rules: what a rule_id in the policy map (and in flows) stands for."""

    rule_id: U32
    kind: str
    name: str
    namespace: str
    direction: str                    # ingress | egress
    deny: bool
    index: INDEX                      # position in its list (ingress, ingressDeny, ...)


@dataclass(frozen=True)
class PolicyApplied(Message):
    kind: str
    name: str
    namespace: str
    action: str
    revision: COUNT
    warnings: list[str] = field(default_factory=list)
    entries_written: COUNT = 0
    entries_removed: COUNT = 0


@dataclass(frozen=True)
class PolicyPreviewRequest(Message):
    """policy.preview: what applying DOCUMENT would change, with nothing written."""

    KIND = "policy.preview"
    document: dict[str, Any]


@dataclass(frozen=True)
class PreviewVerdict(Message):
    verdict: str                      # allowed | denied | audit (a would-be drop let through)
    reason: str                       # the rule or default that decides it


@dataclass(frozen=True)
class PreviewCell(Message):
    """One cell of the reachability matrix: a new connection from SOURCE to DESTINATION."""

    source: str                       # namespace/pod
    destination: str
    protocol: str                     # TCP | UDP | SCTP | ICMP
    port: PORT                        # for ICMP: the type
    before: PreviewVerdict
    after: PreviewVerdict


@dataclass(frozen=True)
class PolicyPreview(Message):
    """The reply to policy.preview: every cell with an affected pod (one whose policy
    entries change) at either end, before and after."""

    kind: str
    name: str
    namespace: str
    action: str                       # what an apply would do: created | configured | unchanged
    affected: list[str]               # pods whose entries change
    ports: list[str]                  # "TCP/5432", "ICMP/8": the columns previewed
    cells: list[PreviewCell]
    warnings: list[str] = field(default_factory=list)


# ---- ipcache (routed) --------------------------------------------------------------------


@dataclass(frozen=True)
class IpcacheUpsert(Message):
    KIND = "ipcache.upsert"
    cidr: str
    identity: IDENTITY
    source: str                       # who put it there: "endpoint", "node", "cidr-policy"


@dataclass(frozen=True)
class IpcacheDelete(Message):
    KIND = "ipcache.delete"
    cidr: str
    source: str


IPCACHE_BATCH_MAX = 16384       # prefixes in one ipcache.batch request (a few hundred KB)


@dataclass(frozen=True)
class IpcacheBatch(Message):
    """ipcache.batch: one source's claims on many prefixes in one request. ``released``
    prefixes are given up first, then ``cidrs[i]`` is claimed as ``identities[i]``; at most
    IPCACHE_BATCH_MAX of both together. check: answer whether it fits, change nothing."""

    KIND = "ipcache.batch"
    source: str
    cidrs: list[str] = field(default_factory=list)
    identities: list[IDENTITY] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    check: bool = False


@dataclass(frozen=True)
class IpcacheBatchDone(Message):
    """The answer to ipcache.batch: prefixes claimed and released, and the entries the map
    holds afterwards. With check: the entries it would add and remove, and holds now."""

    claimed: COUNT
    released: COUNT
    entries: COUNT
    capacity: COUNT


@dataclass(frozen=True)
class IpcacheEntry(Message):
    cidr: str
    identity: IDENTITY
    source: str
    tunnel_endpoint: str = ""        # a remote pod's node (underlay IPv4) in tunnel mode


# ---- health ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health(Message):
    service: str
    pid: PID
    started: SECONDS
    ready: bool
    detail: str = ""
    metrics_port: PORT = 0
    counters: dict[str, COUNT] = field(default_factory=dict)


# ---- flows (flowd) -------------------------------------------------------------------------

VERDICTS = ("FORWARDED", "DROPPED", "AUDIT")


@dataclass(frozen=True)
class FlowFilter(Message):
    """Which flows a reader wants (`capillary observe` flags). Values of one field are
    alternatives (any may match); fields must all match. Empty: no condition."""

    verdict: list[str] = field(default_factory=list)          # FORWARDED | DROPPED | AUDIT
    from_pod: list[str] = field(default_factory=list)         # NS/NAME
    to_pod: list[str] = field(default_factory=list)
    pod: list[str] = field(default_factory=list)              # either side
    namespace: list[str] = field(default_factory=list)        # either side
    port: list[PORT] = field(default_factory=list)             # either side
    protocol: list[str] = field(default_factory=list)         # tcp | udp | icmp
    type: list[str] = field(default_factory=list)             # drop | trace[:point] | policy-verdict
    traffic_direction: list[str] = field(default_factory=list)  # ingress | egress
    since: SECONDS = 0.0                                        # unix time; 0: any


@dataclass(frozen=True)
class FlowQuery(Message):
    """observer.flows: the LAST most recent flows in flowd's history that match FILTER."""

    KIND = "flow.query"
    last: INDEX = 0                     # 0: every match the history holds
    filter: FlowFilter = field(default_factory=FlowFilter)


@dataclass(frozen=True)
class MonitorAttach(Message):
    """observer.monitor: publish raw datapath events on monitor(node) for LEASE seconds
    more, for the monitor named MONITOR (it renews its lease while it runs, and gives it
    back with a lease of 0 when it stops)."""

    KIND = "monitor.attach"
    monitor: str
    lease: SECONDS = 10.0


@dataclass(frozen=True)
class MonitorEvents(Message):
    """A batch of raw datapath events on monitor(node): struct flow_event records as the ring
    held them, and the ring's count of events lost because it was full (since flowd
    started), so a monitor can report losses as they happen."""

    KIND = "monitor.events"
    events: list[bytes]
    lost: COUNT = 0


@dataclass(frozen=True)
class FlowEvent(Message):
    """One flow on flows(node, verdict): a Hubble flow (its JSON field names and meanings)."""

    KIND = "flow"
    flow: dict[str, Any]
