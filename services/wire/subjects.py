"""Every NATS subject capillary uses, built by functions: nobody formats one by hand.

Request subjects (request/reply) are served by exactly one service; event subjects are
published by exactly one service. The same table drives the per-service NATS permissions
(services.runtime.natsserver), so a service can only use what is listed for it here.
"""
from __future__ import annotations

from collections import namedtuple

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
POLICY_PREVIEW = f"{ROOT}.policy.preview"              # what an apply would change; writes nothing

# routed: ipcache
IPCACHE_UPSERT = f"{ROOT}.ipcache.upsert"
IPCACHE_DELETE = f"{ROOT}.ipcache.delete"
IPCACHE_LIST = f"{ROOT}.ipcache.list"
IPCACHE_BATCH = f"{ROOT}.ipcache.batch"        # many prefixes of one source in one request

# routed in a cluster: the members it knows, with their health
NODES_LIST = f"{ROOT}.nodes.list"

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


# In a cluster every node's services share one NATS: each node's request and event subjects
# carry its name (capillary.node.<node>.pod.apply), so a request reaches that node's service
# and no other. Flows and monitor events already name their node and stay as they are, so one
# subscriber sees every node's.
NODE_SCOPE = f"{ROOT}.node"
CLUSTER_WIDE = (FLOWS, MONITOR)


def on_node(subject: str, node: str | None) -> str:
    """SUBJECT as node NODE's (None: a lone node's subjects are unscoped); a pattern
    ("capillary.endpoint.events.>") scopes the same way, and "*" as NODE matches every node."""
    if node is None or not subject.startswith(f"{ROOT}.") or \
            any(subject == w or subject.startswith(f"{w}.") for w in CLUSTER_WIDE):
        return subject
    return f"{NODE_SCOPE}.{node}.{subject[len(ROOT) + 1:]}"


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
# endpointd as Docker's IPAM driver: the addresses Docker holds (RequestAddress until
# ReleaseAddress), keyed by address, each with the endpoint that uses it once there is one.
BUCKET_DOCKER_ADDRESSES = "capillary_docker_addresses"
# policyd in a cluster (services.policyd.clusterids): identity numbers every node shares
BUCKET_IDENTITY_NUMBERS = "capillary_identity_numbers"
BUCKET_IDENTITY_LABELS = "capillary_identity_labels"
# routed in a cluster (services.wire.cluster): every node's record and every node's pods
BUCKET_NODES = "capillary_nodes"
BUCKET_CLUSTER_ENDPOINTS = "capillary_endpoints"
# routed: ipcache claims a higher one shadows, which its map cannot show (services.routed.shadowed)
BUCKET_IPCACHE_SHADOWED = "capillary_ipcache_shadowed"
BUCKETS = {
    BUCKET_NAMESPACES: "endpointd",
    BUCKET_PODS: "endpointd",
    BUCKET_DOCKER_ADDRESSES: "endpointd",
    BUCKET_IDENTITIES: "policyd",
    BUCKET_POLICIES: "policyd",
    BUCKET_POLICY_ENDPOINTS: "policyd",
    BUCKET_IDENTITY_NUMBERS: "policyd",
    BUCKET_IDENTITY_LABELS: "policyd",
    BUCKET_NODES: "routed",
    BUCKET_CLUSTER_ENDPOINTS: "routed",
    BUCKET_IPCACHE_SHADOWED: "routed",
}
# Buckets every node shares in a cluster (replicated cluster.kv_replicas times); the others
# hold one node's state.
CLUSTER_BUCKETS = (BUCKET_NAMESPACES, BUCKET_POLICIES, BUCKET_IDENTITY_NUMBERS, BUCKET_IDENTITY_LABELS,
                   BUCKET_NODES, BUCKET_CLUSTER_ENDPOINTS)


class Grants(namedtuple("Grants", "serves calls publishes listens buckets", defaults=((), (), (), ()))):
    """What one service may do on the bus: serve (subscribe + reply), call, publish, listen
    (each a tuple of subjects), and the KV buckets it owns. A named tuple, not a dataclass:
    the CNI plugin imports this module on every command."""

    __slots__ = ()


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
        buckets=(BUCKET_NAMESPACES, BUCKET_PODS, BUCKET_DOCKER_ADDRESSES),
    ),
    "policyd": Grants(
        serves=(IDENTITY_ALLOCATE, IDENTITY_RELEASE, IDENTITY_LIST, POLICY_APPLY, POLICY_DELETE,
                POLICY_LIST, POLICY_ENTRIES, POLICY_ENDPOINT_SYNC, POLICY_ENDPOINT_FORGET,
                POLICY_RULES, POLICY_PREVIEW, health("policyd")),
        # a preview names pods and takes ports from recent flows
        calls=(IPCACHE_UPSERT, IPCACHE_DELETE, IPCACHE_BATCH, POD_LIST, OBSERVER_FLOWS, health("policyd")),
        listens=(f"{ENDPOINT_EVENTS}.>",),
        buckets=(BUCKET_IDENTITIES, BUCKET_POLICIES, BUCKET_POLICY_ENDPOINTS, BUCKET_IDENTITY_NUMBERS,
                 BUCKET_IDENTITY_LABELS),
    ),
    "routed": Grants(
        serves=(IPCACHE_UPSERT, IPCACHE_DELETE, IPCACHE_LIST, IPCACHE_BATCH, NODES_LIST, health("routed")),
        calls=(health("routed"),),
        buckets=(BUCKET_NODES, BUCKET_CLUSTER_ENDPOINTS, BUCKET_IPCACHE_SHADOWED),
    ),
    "flowd": Grants(
        serves=(OBSERVER_FLOWS, OBSERVER_MONITOR, health("flowd")),
        calls=(POD_LIST, IDENTITY_LIST, POLICY_RULES, health("flowd")),
        listens=(f"{ENDPOINT_EVENTS}.>",),
        publishes=(f"{FLOWS}.>", f"{MONITOR}.>"),
    ),
}

# Users that are not services. They only read: no publishing at all (hence no requests and
# no inbox), and subscriptions to what is listed here.
FLOWS_READER = "flows"      # subscribers to flows, e.g. examples/subscribe_flows.py
READERS: dict[str, Grants] = {
    FLOWS_READER: Grants(serves=(), listens=(f"{FLOWS}.>",)),
}

# Users that are clients, not services: they publish to the requests they call, subscribe to
# what they listen to and to their own reply inbox, and serve nothing.
# cni: the CNI plugin, which makes, checks and deletes pods.
# web: the service map page (services/web), which lists pods and namespaces, shows flows,
# previews a policy and walks a pair with `capillary walk`'s code (a flow subscription and
# pod.list).
CNI_CLIENT = "cni"
WEB = "web"
CLIENTS: dict[str, Grants] = {
    CNI_CLIENT: Grants(serves=(), calls=(NAMESPACE_APPLY, NAMESPACE_DELETE, NAMESPACE_LIST, POD_APPLY,
                                         POD_DELETE, POD_LIST, POD_CHECK, *(health(s) for s in SERVICES))),
    WEB: Grants(serves=(), calls=(NAMESPACE_LIST, POD_LIST, POLICY_PREVIEW), listens=(f"{FLOWS}.>",)),
}
