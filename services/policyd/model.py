"""The policy model every policy kind is parsed into, and selector matching. Pure logic.

Selectors match *identity labels* (services.wire.labels): a pod's labels with the ``k8s:``
source, plus ``k8s:io.kubernetes.pod.namespace`` and the namespace's labels under
``k8s:io.cilium.k8s.namespace.labels.``. Keys in selectors may be written with or without
the ``k8s:`` source, as in Cilium.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.wire import codec, prefix
from services.wire.labels import NAMESPACE_LABEL_PREFIX, POD_NAMESPACE, SOURCE

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ANY")
ENTITIES = ("host", "world", "all", "cluster")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _source_key(key: str) -> str:
    """Selector key -> identity label key: 'app' and 'k8s:app' both mean 'k8s:app'."""
    if key.startswith(f"{SOURCE}:") or key.startswith("reserved:") or key.startswith("cidr:"):
        return key
    if key.startswith("any:"):
        key = key[len("any:"):]
    return f"{SOURCE}:{key}"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present      # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """A label selector over identity labels. The empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, match_labels: dict[str, str] | None = None,
           match_expressions: list[Requirement] | None = None) -> "Selector":
        labels = tuple(sorted((_source_key(k), v) for k, v in (match_labels or {}).items()))
        exprs = tuple(Requirement(_source_key(r.key), r.operator, tuple(r.values))
                      for r in (match_expressions or []))
        return cls(labels, exprs)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and \
            all(r.matches(labels) for r in self.match_expressions)

    def keys(self) -> set[str]:
        return {k for k, _ in self.match_labels} | {r.key for r in self.match_expressions}


def namespace_of(identity_labels: dict[str, str]) -> str | None:
    return identity_labels.get(f"{SOURCE}:{POD_NAMESPACE}")


def namespace_labels_of(identity_labels: dict[str, str]) -> dict[str, str]:
    """A pod identity's namespace labels, keyed as a namespaceSelector sees them."""
    prefix = f"{SOURCE}:{NAMESPACE_LABEL_PREFIX}"
    return {f"{SOURCE}:{k[len(prefix):]}": v for k, v in identity_labels.items() if k.startswith(prefix)}


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other side of a rule. Exactly one of the three forms is set:

    - endpoints: pods whose identity labels match ``pods`` (None: any pod), restricted to
      ``namespace`` when set, and to namespaces matching ``namespaces`` when set;
    - entity: one of ENTITIES;
    - cidr (with ``except_`` prefixes carved out).
    """

    pods: Selector | None = None
    namespaces: Selector | None = None
    namespace: str | None = None
    entity: str | None = None
    cidr: str | None = None
    except_: tuple[str, ...] = ()

    @property
    def is_endpoints(self) -> bool:
        return self.entity is None and self.cidr is None

    def matches_pod(self, identity_labels: dict[str, str]) -> bool:
        if not self.is_endpoints:
            return False
        ns = namespace_of(identity_labels)
        if ns is None:
            return False
        if self.namespace is not None and ns != self.namespace:
            return False
        if self.namespaces is not None and not self.namespaces.matches(namespace_labels_of(identity_labels)):
            return False
        return self.pods is None or self.pods.matches(identity_labels)


@dataclass(frozen=True)
class PortRule:
    """A protocol and a port range; port 0 means every port. For ICMP, port is the type."""

    protocol: str = "ANY"
    port: int = 0
    end_port: int = 0           # 0: just `port`

    @property
    def last(self) -> int:
        return self.end_port or self.port


@dataclass(frozen=True)
class Rule:
    direction: str
    deny: bool
    peers: tuple[Peer, ...] = ()       # empty: every peer
    ports: tuple[PortRule, ...] = ()   # empty: every protocol and port
    index: int = 0                     # position within its list (ingress, egress, ingressDeny, ...)


class PackedDocument(Mapping):
    """A policy's canonical document kept as its msgpack encoding (what KV stores), read
    back whole when asked: a 100,000-peer document is 4 MB packed and ~50 MB of Python
    objects. A read-only mapping equal to the dict it packs."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def unpacked(self) -> dict:
        return codec.decode(self.raw)

    def __getitem__(self, key: str) -> Any:
        return self.unpacked()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.unpacked())

    def __len__(self) -> int:
        return len(self.unpacked())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedDocument) and other.raw == self.raw:
            return True
        return isinstance(other, Mapping) and self.unpacked() == plain_document(other)

    __hash__ = None


def plain_document(document: Mapping) -> dict:
    """DOCUMENT as a dict (what the bus and KV carry)."""
    return document.unpacked() if isinstance(document, PackedDocument) else dict(document)


class computed_once:
    """A method's value worked out on first use and kept in the instance (frozen or not), as
    functools.cached_property without its lock: Python 3.11's is one lock for every
    instance of the class, so one policy's prefixes worked out on a worker thread (a tenth
    of a second at 100,000 peers) held up every other policy's on the event loop. Two
    threads may both work a value out; they get equal ones."""

    def __init__(self, method) -> None:
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.method(instance)
        return value


@dataclass(frozen=True)
class Policy:
    kind: str                          # NetworkPolicy | CiliumNetworkPolicy | CiliumClusterwideNetworkPolicy
    name: str
    namespace: str                     # "" for cluster-wide
    subject: Selector                  # which endpoints it applies to
    enforces: frozenset[str]           # directions it puts those endpoints in default-deny
    rules: tuple[Rule, ...]
    audit: bool = False
    document: Mapping = field(default_factory=dict, compare=False)   # the canonical stored form (or PackedDocument)

    @computed_once
    def cidrs(self) -> frozenset[str]:
        """Every prefix the rules' CIDR peers name, their excepts included, each in its one
        spelling: the CIDR identities this policy holds. Worked out once per policy (every
        plan of every change asks for every policy's)."""
        out = set()
        for rule in self.rules:
            for peer in rule.peers:
                if peer.cidr is not None:
                    out.add(prefix.canonical(peer.cidr))
                    out.update(prefix.canonical(e) for e in peer.except_)
        return frozenset(out)

    @computed_once
    def weight(self) -> int:
        """Its rules with their peers and ports: how much work compiling it is."""
        return sum(1 + len(rule.peers) + len(rule.ports) for rule in self.rules)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def selects(self, identity_labels: dict[str, str]) -> bool:
        if self.namespace and namespace_of(identity_labels) != self.namespace:
            return False
        return self.subject.matches(identity_labels)
