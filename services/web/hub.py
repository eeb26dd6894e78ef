"""Flows in, a service map and samples out. Pure: no I/O, no clock of its own.

Every flow that reaches the page's backend is counted and aggregated into links between
cards; the page is sent only a sample. Invariant, per subscriber and per batch:
`shown <= matched`, and `matched` counts every flow its filter accepted since the last batch,
so the page can say "showing 40 of 2,513".

A link is (source card, destination card, protocol, port) of requests the datapath decided:
a drop event counts as dropped; a trace of the packet leaving for a pod or the host stack
counts as forwarded. Policy verdicts and from-endpoint traces are steps on the way, and
replies belong to the link of their request: neither is counted on a link.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from services.datapath.numbers import EVENT_DROP, EVENT_TRACE, TRACE_TO_LXC, TRACE_TO_STACK
from services.web.workloads import Card, card_of_endpoint, pod_ref

L4 = (("TCP", "TCP"), ("UDP", "UDP"), ("ICMPv4", "ICMP"))
RECENT = 500                    # flows kept for a new subscriber's first screen
BATCH = 40                      # flows a subscriber is sent per batch at most
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT")
CARD_CACHE = 65536


def protocol_port(flow: dict) -> tuple[str, int]:
    l4 = flow.get("l4", {})
    for key, name in L4:
        if key in l4:
            return name, l4[key].get("destination_port", 0)
    return "", 0


def decided(flow: dict) -> str | None:
    """"dropped", "forwarded" or None: what FLOW says about its link (see the module doc)."""
    event = flow.get("event_type", {})
    kind = event.get("type")
    if kind == EVENT_DROP:
        return None if flow.get("is_reply") else "dropped"
    if kind == EVENT_TRACE and event.get("sub_type") in (TRACE_TO_LXC, TRACE_TO_STACK) and not flow.get("is_reply"):
        return "forwarded"
    return None


@dataclass(slots=True)
class Link:
    source: Card
    destination: Card
    protocol: str
    port: int
    forwarded: int = 0
    dropped: int = 0
    pods: tuple[str, str] = ("", "")     # the last pod pair seen on it, for "walk this"

    @property
    def verdict(self) -> str:
        if self.forwarded and self.dropped:
            return "both"
        return "dropped" if self.dropped else "forwarded"

    def to_json(self) -> dict:
        return {"source": self.source.key, "destination": self.destination.key, "protocol": self.protocol,
                "port": self.port, "forwarded": self.forwarded, "dropped": self.dropped,
                "verdict": self.verdict, "source_pod": self.pods[0], "destination_pod": self.pods[1]}


@dataclass(frozen=True)
class Filter:
    """The flow table's filter; empty fields match everything."""

    verdict: str = ""
    namespace: str = ""
    pod: str = ""               # a substring of either side's NS/NAME
    port: int = 0

    def __post_init__(self) -> None:
        if self.verdict and self.verdict not in VERDICTS:
            raise ValueError(f"verdict: {self.verdict!r} is not one of {', '.join(VERDICTS)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a port (0-65535; 0: any)")

    def matches(self, flow: dict) -> bool:
        if self.verdict and flow.get("verdict") != self.verdict:
            return False
        src, dst = flow.get("source", {}), flow.get("destination", {})
        if self.namespace and self.namespace not in (src.get("namespace"), dst.get("namespace")):
            return False
        if self.pod and self.pod not in pod_ref(src) and self.pod not in pod_ref(dst):
            return False
        if self.port:
            ports = next((v for k, v in flow.get("l4", {}).items() if "destination_port" in v), None)
            if ports is None or self.port not in (ports["source_port"], ports["destination_port"]):
                return False
        return True


@dataclass(eq=False)
class Subscriber:
    """One page's live table: a uniform sample (reservoir) of the flows its filter matched."""

    filter: Filter
    size: int = BATCH
    matched: int = 0
    sample: list[dict] = field(default_factory=list)
    rand: random.Random = field(default_factory=random.Random)

    def offer(self, flow: dict) -> None:
        if self.filter.matches(flow):
            self.take_matched(flow)

    def take_matched(self, flow: dict) -> None:
        """FLOW, which the filter matched: into the sample with probability size/matched."""
        self.matched += 1
        if len(self.sample) < self.size:
            self.sample.append(flow)
        else:
            slot = self.rand.randrange(self.matched)
            if slot < self.size:
                self.sample[slot] = flow

    def take(self) -> dict:
        """The batch since the last take: the sample, in time order, and the counts."""
        flows = sorted(self.sample, key=lambda f: f.get("time", ""))
        batch = {"flows": flows, "matched": self.matched, "shown": len(flows)}
        self.sample, self.matched = [], 0
        return batch


class Hub:
    def __init__(self, recent: int = RECENT) -> None:
        self.links: dict[tuple[str, str, str, int], Link] = {}
        self.recent: deque[dict] = deque(maxlen=recent)
        self.subscribers: set[Subscriber] = set()
        self.received = 0
        self.undecodable = 0
        self._cards: dict[tuple, Card] = {}

    def add(self, flow: dict) -> None:
        """Count FLOW, offer it to every subscriber and add it to its link. A flow whose
        fields have the wrong types (codec.decode_flow checks only the envelope) is counted
        as undecodable and goes nowhere."""
        self.received += 1
        try:
            outcome = decided(flow)
            matched = [sub for sub in self.subscribers if sub.filter.matches(flow)]
            if outcome is not None:
                src, dst = flow.get("source", {}), flow.get("destination", {})
                ends = (self._card(src), self._card(dst))
                pods = (pod_ref(src), pod_ref(dst))
                protocol, port = protocol_port(flow)
        except (AttributeError, TypeError, KeyError, ValueError):
            self.undecodable += 1
            return
        self.recent.append(flow)
        for sub in matched:
            sub.take_matched(flow)
        if outcome is not None:
            self._count((ends[0].key, ends[1].key, protocol, port), ends, protocol, port, outcome, pods)

    def reject(self) -> None:
        """A payload that did not decode: received, and counted as undecodable."""
        self.received += 1
        self.undecodable += 1

    def _card(self, endpoint: dict) -> Card:
        """card_of_endpoint, remembered per (namespace, identity): an identity is a label set."""
        key = (endpoint.get("namespace"), endpoint.get("identity"))
        card = self._cards.get(key)
        if card is None:
            if len(self._cards) >= CARD_CACHE:
                self._cards.clear()
            card = self._cards[key] = card_of_endpoint(endpoint)
        return card

    def _count(self, key: tuple, ends: tuple[Card, Card], protocol: str, port: int, outcome: str,
               pods: tuple[str, str]) -> None:
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = Link(ends[0], ends[1], protocol, port)
        if outcome == "dropped":
            link.dropped += 1
        else:
            link.forwarded += 1
        if all(pods):
            link.pods = pods

    def subscribe(self, flt: Filter, size: int = BATCH) -> Subscriber:
        """A new subscriber, primed with the recent flows its filter matches (the last SIZE)."""
        sub = Subscriber(flt, size)
        for flow in [f for f in self.recent if flt.matches(f)][-size:]:
            sub.offer(flow)
        sub.matched = len(sub.sample)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def service_map(self, namespace: str, pods: list[dict]) -> dict:
        """The cards of NAMESPACE (from its pods, and every peer its links reach) and those links."""
        cards: dict[str, dict] = {}
        for pod in pods:
            if pod["card"].namespace == namespace:
                entry = cards.setdefault(pod["card"].key, _card_json(pod["card"]))
                entry["pods"].append(pod["ref"])
        for c in (Card("world", "", "world"), Card("host", "", "host")):
            cards.setdefault(c.key, _card_json(c))
        links = [link for link in self.links.values()
                 if namespace in (link.source.namespace, link.destination.namespace)]
        for link in links:
            for card in (link.source, link.destination):
                cards.setdefault(card.key, _card_json(card))
            ports = cards[link.destination.key]["ports"]
            port = f"{link.port}/{link.protocol}" if link.protocol != "ICMP" else "ICMP"
            if port not in ports:
                ports.append(port)
        for entry in cards.values():
            entry["ports"].sort(key=lambda p: (len(p), p))
        return {"namespace": namespace, "cards": sorted(cards.values(), key=lambda c: c["key"]),
                "links": [link.to_json() for link in links], "received": self.received}


def _card_json(card: Card) -> dict:
    return {"key": card.key, "namespace": card.namespace, "name": card.name, "pods": [], "ports": []}
