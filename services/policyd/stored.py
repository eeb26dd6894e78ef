"""Stored policies back into force, failing closed. Pure logic, no I/O.

A policy in KV was valid when it was applied, but a stricter parser or a damaged document
may reject it at the next start. Skipping it would drop the endpoints it selected back to
default allow. Instead it is replaced by a stand-in that allows nothing and puts those
endpoints in default deny in both directions: the ones its endpointSelector (podSelector)
selects when that much still parses, else every endpoint in its namespace, else every
endpoint (a cluster-wide policy, or one whose namespace cannot be read). When the broken
document has deny rules (ingressDeny, egressDeny), the stand-in denies everything in both
directions instead: which of its denies would hold is unknown, and default deny alone would
let another policy's allow reopen what it denied. The stand-in keeps the stored document, so
`get` shows it; applying a good version or deleting it lifts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.policyd.compiler import Universe, compile_rules
from services.policyd.fields import selector
from services.policyd.model import DIRECTIONS, Policy, Rule, Selector
from services.policyd.parse import CCNP, CNP, NETWORK_POLICY, parse_policy
from services.wire.manifests import DEFAULT_NAMESPACE, DNS_LABEL


@dataclass(frozen=True)
class Stored:
    policy: Policy
    problem: str | None = None      # why the document is not in force as written


def load(kv_key: str, raw: Any, universe: Universe) -> Stored:
    """The policy stored at KV_KEY, or its fail-closed stand-in and the reason."""
    try:
        policy = parse_policy(raw).policy
        compile_rules(policy, universe)
        return Stored(policy)
    # Whatever the parser or compiler raise (their own errors, or a RecursionError on a
    # document they were never meant to see), the stored policy is not in force as written.
    except Exception as exc:  # noqa: BLE001 - fail closed on any failure
        return Stored(stand_in(kv_key, raw), f"{type(exc).__name__}: {exc}")


def stand_in(kv_key: str, raw: Any) -> Policy:
    doc = raw if isinstance(raw, dict) else {}
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    kind = doc.get("kind") if doc.get("kind") in (NETWORK_POLICY, CNP, CCNP) else None
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else None
    if kind is None or name is None:
        kind, name = CCNP, kv_key                 # nothing to scope it by: every endpoint
    namespace = "" if kind == CCNP else _namespace(meta)
    rules = tuple(Rule(direction, deny=True) for direction in DIRECTIONS) if _has_deny(doc) else ()
    return Policy(kind=kind, name=name, namespace=namespace, subject=_subject(kind, doc),
                  enforces=frozenset(DIRECTIONS), rules=rules, document=doc or {"stored": repr(raw)[:200]})


def _has_deny(doc: dict) -> bool:
    """Whether any spec of DOC has an ingressDeny or egressDeny key (at any value)."""
    specs = [doc.get("spec")] + (doc.get("specs") if isinstance(doc.get("specs"), list) else [])
    return any(isinstance(spec, dict) and ({"ingressDeny", "egressDeny"} & spec.keys()) for spec in specs)


def _namespace(meta: dict) -> str:
    """The policy's namespace as the parser reads it; "" (every namespace) when unreadable."""
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if namespace is None:
        return DEFAULT_NAMESPACE
    return namespace if isinstance(namespace, str) and DNS_LABEL.match(namespace) else ""


def _subject(kind: str, doc: dict) -> Selector:
    """The endpoints' selector when it still parses (one for every spec), else everything."""
    try:
        if kind == NETWORK_POLICY:
            return selector(doc["spec"]["podSelector"], "spec.podSelector", sourced=False)
        objects = ([doc["spec"]] if doc.get("spec") is not None else []) + list(doc.get("specs") or [])
        found = {selector(obj["endpointSelector"], "endpointSelector", sourced=True) for obj in objects}
    except Exception:  # noqa: BLE001 - best effort; the fallback selects more, never less
        return Selector()
    return found.pop() if len(found) == 1 else Selector()
