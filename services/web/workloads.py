"""Which card a pod or a flow's endpoint belongs to. Pure.

A card is a workload: the pods of one namespace with the same `app` label (or, without
one, the same identity), and the reserved peers `world` and `host` of their own.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.datapath.numbers import IDENTITY_HOST, IDENTITY_WORLD

APP_LABELS = ("app", "app.kubernetes.io/name", "k8s-app")
WORLD = "world"
HOST = "host"
REMOTE_NODE = 6           # reserved:remote-node: another node's host, drawn as host
RESERVED_CARDS = {IDENTITY_WORLD: WORLD, IDENTITY_HOST: HOST, REMOTE_NODE: HOST}


@dataclass(frozen=True, slots=True)
class Card:
    key: str                # "ns/app", "ns/identity-N", "world", "host" or "identity-N"
    namespace: str          # "" for reserved and unknown peers
    name: str


def _app(labels: dict[str, str]) -> str | None:
    return next((labels[k] for k in APP_LABELS if labels.get(k)), None)


def card_of_pod(namespace: str, labels: dict[str, str], identity: int) -> Card:
    name = _app(labels) or f"identity-{identity}"
    return Card(f"{namespace}/{name}", namespace, name)


def identity_labels(labels: list[str]) -> dict[str, str]:
    """Flow endpoint labels ("k8s:app=web") as a mapping without the source prefix."""
    out = {}
    for label in labels:
        _, _, kv = label.partition(":")
        key, _, value = kv.partition("=")
        out[key] = value
    return out


def card_of_endpoint(endpoint: dict) -> Card:
    """The card of a flow's source or destination (Hubble's Endpoint)."""
    identity = endpoint.get("identity", 0)
    namespace = endpoint.get("namespace")
    if namespace:
        return card_of_pod(namespace, identity_labels(endpoint.get("labels", [])), identity)
    reserved = RESERVED_CARDS.get(identity)
    if reserved:
        return Card(reserved, "", reserved)
    return Card(f"identity-{identity}", "", f"identity-{identity}")


def pod_ref(endpoint: dict) -> str:
    """NS/NAME of a flow endpoint that is a local pod, else ""."""
    if endpoint.get("namespace") and endpoint.get("pod_name"):
        return f"{endpoint['namespace']}/{endpoint['pod_name']}"
    return ""
