"""Every NATS subject capillary uses, built by functions: nobody formats one by hand.

Request subjects (request/reply) are served by exactly one service; event subjects are
published by exactly one service. The same table drives the per-service NATS permissions
(services.runtime.natsserver), so a service can only use what is listed for it here.
"""
from __future__ import annotations

from dataclasses import dataclass

ROOT = "capillary"
SERVICES = ("endpointd", "policyd", "routed", "flowd")

# endpointd: namespaces and pods
NAMESPACE_APPLY = f"{ROOT}.namespace.apply"
NAMESPACE_DELETE = f"{ROOT}.namespace.delete"
NAMESPACE_LIST = f"{ROOT}.namespace.list"
POD_APPLY = f"{ROOT}.pod.apply"
POD_DELETE = f"{ROOT}.pod.delete"
POD_LIST = f"{ROOT}.pod.list"
POD_CHECK = f"{ROOT}.pod.check"               # is a pod's kernel plumbing complete (CNI CHECK)
ENDPOINT_EVENTS = f"{ROOT}.endpoint.events"   # + .created / .deleted

# policyd: identities (policies arrive with the policy issue)
IDENTITY_ALLOCATE = f"{ROOT}.identity.allocate"
IDENTITY_RELEASE = f"{ROOT}.identity.release"
IDENTITY_LIST = f"{ROOT}.identity.list"

# policyd: policies and the per-endpoint policy map
POLICY_APPLY = f"{ROOT}.policy.apply"
POLICY_DELETE = f"{ROOT}.policy.delete"
POLICY_LIST = f"{ROOT}.policy.list"
POLICY_ENTRIES = f"{ROOT}.policy.entries"              # one endpoint's map entries, decoded
POLICY_ENDPOINT_SYNC = f"{ROOT}.policy.endpoint.sync"  # compute and write an endpoint's entries
POLICY_ENDPOINT_FORGET = f"{ROOT}.policy.endpoint.forget"
POLICY_RULES = f"{ROOT}.policy.rules"                  # rule_id -> policy and rule, for flows

# routed: ipcache
IPCACHE_UPSERT = f"{ROOT}.ipcache.upsert"
IPCACHE_DELETE = f"{ROOT}.ipcache.delete"
IPCACHE_LIST = f"{ROOT}.ipcache.list"

# supervisor (capillary up)
NODE_STATUS = f"{ROOT}.node.status"

# flowd: every flow is published on flows(node, verdict); the recent ones are kept for
# requests on OBSERVER_FLOWS (`capillary observe --last N`).
FLOWS = f"{ROOT}.flows"
OBSERVER_FLOWS = f"{ROOT}.observer.flows"
# ...and, while a `capillary monitor` holds a lease (requests on OBSERVER_MONITOR), the raw
# datapath events in batches on monitor(node).
MONITOR = f"{ROOT}.monitor"
OBSERVER_MONITOR = f"{ROOT}.observer.monitor"


def inbox_prefix(user: str) -> str:
    """Where USER's replies arrive; its permissions allow subscribing there and nowhere else."""
    return f"_INBOX_{user}"


def health(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return f"{ROOT}.health.{service}"


def endpoint_event(what: str) -> str:
    if what not in ("created", "deleted"):
        raise ValueError(f"unknown endpoint event {what!r}")
    return f"{ENDPOINT_EVENTS}.{what}"


def flows(node: str, verdict: str = "*") -> str:
    """Where NODE publishes flows with VERDICT (FORWARDED, DROPPED, AUDIT; "*": any)."""
    return f"{FLOWS}.{node}.{verdict}"


def monitor(node: str) -> str:
    """Where NODE publishes raw datapath events while a monitor is attached."""
    return f"{MONITOR}.{node}"


# KV buckets holding desired state, and their owners (the only writers).
BUCKET_NAMESPACES = "capillary_namespaces"
BUCKET_PODS = "capillary_pods"
BUCKET_IDENTITIES = "capillary_identities"
BUCKET_POLICIES = "capillary_policies"
# policyd's own record of the endpoints endpointd announced (policy.endpoint.sync / forget)
BUCKET_POLICY_ENDPOINTS = "capillary_policy_endpoints"
BUCKETS = {
    BUCKET_NAMESPACES: "endpointd",
    BUCKET_PODS: "endpointd",
    BUCKET_IDENTITIES: "policyd",
    BUCKET_POLICIES: "policyd",
    BUCKET_POLICY_ENDPOINTS: "policyd",
}


@dataclass(frozen=True)
class Grants:
    """What one service may do on the bus: serve (subscribe + reply), call, publish, listen."""

    serves: tuple[str, ...]
    calls: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    listens: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()


# Every service also calls its own health subject: its container's healthcheck asks it
# with the service's own credentials.
GRANTS: dict[str, Grants] = {
    "endpointd": Grants(
        serves=(NAMESPACE_APPLY, NAMESPACE_DELETE, NAMESPACE_LIST,
                POD_APPLY, POD_DELETE, POD_LIST, POD_CHECK, health("endpointd")),
        calls=(IDENTITY_ALLOCATE, IDENTITY_RELEASE, IPCACHE_UPSERT, IPCACHE_DELETE,
               POLICY_ENDPOINT_SYNC, POLICY_ENDPOINT_FORGET, health("routed"), health("policyd"),
               health("flowd"), health("endpointd")),
        publishes=(f"{ENDPOINT_EVENTS}.>",),
        buckets=(BUCKET_NAMESPACES, BUCKET_PODS),
    ),
    "policyd": Grants(
        serves=(IDENTITY_ALLOCATE, IDENTITY_RELEASE, IDENTITY_LIST, POLICY_APPLY, POLICY_DELETE,
                POLICY_LIST, POLICY_ENTRIES, POLICY_ENDPOINT_SYNC, POLICY_ENDPOINT_FORGET,
                POLICY_RULES, health("policyd")),
        calls=(IPCACHE_UPSERT, IPCACHE_DELETE, health("policyd")),
        listens=(f"{ENDPOINT_EVENTS}.>",),
        buckets=(BUCKET_IDENTITIES, BUCKET_POLICIES, BUCKET_POLICY_ENDPOINTS),
    ),
    "routed": Grants(
        serves=(IPCACHE_UPSERT, IPCACHE_DELETE, IPCACHE_LIST, health("routed")),
        calls=(health("routed"),),
    ),
    "flowd": Grants(
        serves=(OBSERVER_FLOWS, OBSERVER_MONITOR, health("flowd")),
        calls=(POD_LIST, IDENTITY_LIST, POLICY_RULES, health("flowd")),
        listens=(f"{ENDPOINT_EVENTS}.>",),
        publishes=(f"{FLOWS}.>", f"{MONITOR}.>"),
    ),
}

# Users that are clients, not services: they call requests and listen, and serve nothing.
# web: the service map page (services/web), which lists pods and namespaces, shows flows and
# walks a pair with `capillary walk`'s code (a flow subscription and pod.list).
WEB = "web"
CLIENTS: dict[str, Grants] = {
    WEB: Grants(serves=(), calls=(NAMESPACE_LIST, POD_LIST), listens=(f"{FLOWS}.>",)),
}

# Users that are not services. They only read: no publishing at all (hence no requests and
# no inbox), and subscriptions to what is listed here.
FLOWS_READER = "flows"      # subscribers to flows, e.g. examples/subscribe_flows.py
READERS: dict[str, Grants] = {
    FLOWS_READER: Grants(serves=(), listens=(f"{FLOWS}.>",)),
}
