"""Where the CLI sends each request in a cluster (a lone node: always to itself).

A pod goes to the node its spec.nodeName names (default: the node whose NATS the CLI reached);
namespaces and policies are cluster-wide: every healthy node's endpointd or policyd takes
them (each keeps them in the shared KV bucket and applies them locally). Listing pods asks
every healthy node, and reads the others' pods from the shared pods bucket (phase Unknown).
An unknown node name is refused before anything is sent.
"""
from __future__ import annotations

from services.cli.client import Client
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.manifests import Document
from services.wire.messages import INVALID, ListRequest

UNKNOWN = "Unknown"        # the phase of a pod whose node is not ready (its record, not its state)


async def members(client: Client) -> list[dict]:
    """The cluster's nodes as this node's routed knows them (this node first)."""
    if not client.config.cluster.enabled:
        return [{"name": client.config.node, "healthy": True, "self": True}]
    return await client.call(subjects.NODES_LIST, ListRequest())


def healthy(nodes: list[dict]) -> list[str]:
    return [n["name"] for n in nodes if n["healthy"]]


def target(value: str | None, own: str) -> str | None:
    """None for this node (a lone node's subjects carry no name)."""
    return None if value in (None, own) else value


async def targets(client: Client, docs: list[Document]) -> list[list[str | None]]:
    """For each document, the nodes to apply it on; raises, having sent nothing, when a pod
    names a node the cluster does not know."""
    own = client.config.node
    nodes = await members(client)
    names = [n["name"] for n in nodes]
    out = []
    for doc in docs:
        if doc.kind == "Pod":
            spec = doc.body.get("spec") or {}
            wanted = spec.get("nodeName") or own
            if wanted not in names:
                raise ServiceError(INVALID, f'{doc.label}: spec.nodeName: unknown node "{wanted}" '
                                            f"(nodes: {', '.join(names)})")
            out.append([target(wanted, own)])
        else:
            out.append([target(n, own) for n in healthy(nodes)])
    return out


async def pods_by_node(client: Client, namespace: str) -> list[tuple[str, dict]]:
    """(node, pod) for every pod in the cluster. A healthy node's endpointd lists its own; a
    node that is not ready cannot, so its pods are read as last recorded in the shared pods
    bucket, with "phase": "Unknown" (as kubectl shows a NotReady node's pods): a node that
    does not answer never makes its pods look gone."""
    nodes = await members(client)
    out = []
    for name in healthy(nodes):
        pods = await client.call(subjects.POD_LIST, ListRequest(namespace=namespace),
                                 node=target(name, client.config.node))
        out += [(name, p) for p in pods]
    down = [n["name"] for n in nodes if not n["healthy"]]
    if down:
        stored = await client.bus.kv_items(await client.bus.kv(subjects.BUCKET_PODS))
        for key, pod in sorted(stored.items()):
            node = next((name for name in down if key.startswith(f"{name}.")), None)
            if node and (not namespace or pod["spec"]["namespace"] == namespace):
                out.append((node, {**pod, "phase": UNKNOWN}))
    return out


async def pod_nodes(client: Client, namespace: str) -> dict[str, str | None]:
    """Where each pod of NAMESPACE is, by name (None: this node), from one listing: deleting
    a file of N pods lists them once, not N times (N listings of N pods each)."""
    return {pod["spec"]["name"]: target(node, client.config.node)
            for node, pod in await pods_by_node(client, namespace)}


async def node_of_pod(client: Client, namespace: str, name: str) -> str | None:
    """The node of one pod (None: this node; a pod nowhere is looked for here, which says so)."""
    if not client.config.cluster.enabled:
        return None                           # a lone node: every pod is its own
    return (await pod_nodes(client, namespace)).get(name)
