"""apply / create / delete / get / exec."""
from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from services.cli import placement
from services.cli.client import Client
from services.cli.output import age, dump, labels_text, table
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.limits import LimitError, read_text
from services.wire.manifests import (DEFAULT_NAMESPACE, Document, ManifestError, load_documents,
                                     parse_namespace, parse_pod)
from services.policyd.parse import POLICY_KINDS, parse_policy
from services.wire.messages import EXISTS, INVALID, NOT_FOUND, Apply, ListRequest, ObjectRef



@dataclass(frozen=True)
class Kind:
    apply: str
    delete: str
    validate: Callable[[Document], object]   # raises ValueError naming the field
    rank: int                                # apply order: namespaces, policies, pods


def _policy(doc: Document) -> object:
    return parse_policy(doc.body)


_POLICY = Kind(subjects.POLICY_APPLY, subjects.POLICY_DELETE, _policy, 1)
KINDS = {("v1", "Namespace"): Kind(subjects.NAMESPACE_APPLY, subjects.NAMESPACE_DELETE, parse_namespace, 0),
         ("v1", "Pod"): Kind(subjects.POD_APPLY, subjects.POD_DELETE, parse_pod, 2),
         **{key: _POLICY for key in POLICY_KINDS}}
KIND_BY_NAME = {kind: k for (_, kind), k in KINDS.items()}
POLICY_KIND_NAMES = sorted({kind for _, kind in POLICY_KINDS})


def read_documents(source: str) -> list[Document]:
    try:
        if source == "-":
            text = read_text(sys.stdin.buffer, "stdin")
        else:
            with open(source, "rb") as stream:
                text = read_text(stream, source)
        docs = load_documents(text)
    except OSError as exc:
        raise ServiceError(INVALID, f"cannot read {source}: {exc.strerror}") from None
    except LimitError as exc:
        raise ServiceError(INVALID, str(exc)) from None
    except ManifestError as exc:
        raise ServiceError(INVALID, f"{source}: {exc}") from None
    seen = set()
    for doc in docs:
        kind = KINDS.get((doc.api_version, doc.kind))
        if kind is None:
            raise ServiceError(INVALID, f"{doc.label}: kind {doc.kind!r} (apiVersion {doc.api_version}) "
                                        "is not supported")
        try:
            kind.validate(doc)          # every document is valid before anything is applied
        except ValueError as exc:
            raise ServiceError(INVALID, str(exc)) from None
        key = (doc.kind, _ns(doc), _name(doc))
        if key in seen:
            raise ServiceError(INVALID, f"{doc.label}: duplicate object in {source}")
        seen.add(key)
    # Namespaces first, so a file may hold a namespace and its pods; policies before pods.
    return sorted(docs, key=lambda d: KINDS[(d.api_version, d.kind)].rank)


def _name(doc: Document) -> str:
    meta = doc.body.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def _ns(doc: Document) -> str:
    meta = doc.body.get("metadata")
    if doc.kind in ("Namespace", "CiliumClusterwideNetworkPolicy"):
        return ""
    return str(meta.get("namespace", DEFAULT_NAMESPACE)) if isinstance(meta, dict) else DEFAULT_NAMESPACE


# Seconds one apply or delete may take: a policy of the documented limits (100,000 ipBlock
# peers, README "Sizing for scale") takes tens of seconds on a busy node.
OBJECT_TIMEOUT = 300.0
PROGRESS_AFTER = 1.0       # seconds before saying what the command waits for


async def _waited(what: str, call):
    """CALL's result; while it takes longer than PROGRESS_AFTER, a line on stderr now and
    then says what is being waited for (stdout keeps only the results)."""
    task = asyncio.ensure_future(call)
    waited, step = 0.0, PROGRESS_AFTER
    while True:
        done, _ = await asyncio.wait({task}, timeout=step)
        if done:
            return task.result()
        waited += step
        print(f"{what}: waiting for the node ({waited:.0f} s)", file=sys.stderr, flush=True)
        step = min(step * 2, 10.0)


async def apply(client: Client, source: str, create_only: bool) -> int:
    docs = read_documents(source)
    where = await placement.targets(client, docs)
    for doc, nodes in zip(docs, where):
        subject = KINDS[(doc.api_version, doc.kind)].apply
        result = await _waited(f"{doc.kind} {_name(doc)}", client.call(
            subject, Apply(doc.body, create_only=create_only), timeout=OBJECT_TIMEOUT, node=nodes[0]))
        for node in nodes[1:]:
            try:
                await client.call(subject, Apply(doc.body, create_only=create_only), timeout=OBJECT_TIMEOUT,
                                  node=node)
            except ServiceError as exc:
                if exc.code != EXISTS:      # that node took it from the shared bucket already
                    raise
        for warning in result.get("warnings", []):
            print(f"Warning: {warning}", file=sys.stderr)
        print(f"{result['kind'].lower()}/{result['name']} {result['action']}")
    return 0


async def delete_file(client: Client, source: str) -> int:
    docs = read_documents(source)
    located: dict[str, dict[str, str | None]] = {}      # namespace -> pod name -> node
    # Pods before policies before their namespaces.
    for doc in sorted(docs, key=lambda d: -KINDS[(d.api_version, d.kind)].rank):
        namespace = _ns(doc)
        if doc.kind == "Pod" and client.config.cluster.enabled and namespace not in located:
            located[namespace] = await placement.pod_nodes(client, namespace)
        await delete_one(client, doc.kind, namespace, _name(doc), located.get(namespace))
    return 0


async def delete_one(client: Client, kind: str, namespace: str, name: str,
                     pod_nodes: dict[str, str | None] | None = None) -> None:
    """Delete one object. POD_NODES: where the pods of NAMESPACE are (placement.pod_nodes),
    when the caller has listed them already."""
    ref = ObjectRef(name=name, namespace=namespace, object_kind=kind if kind in POLICY_KIND_NAMES else "")
    if kind == "Pod":
        nodes = [pod_nodes.get(name) if pod_nodes is not None else
                 await placement.node_of_pod(client, namespace, name)]
    else:
        nodes = [n if n != client.config.node else None for n in placement.healthy(await placement.members(client))]
    result = await _waited(f"{kind} {name}", client.call(KIND_BY_NAME[kind].delete, ref, timeout=OBJECT_TIMEOUT,
                                                          node=nodes[0]))
    for node in nodes[1:]:
        try:
            await client.call(KIND_BY_NAME[kind].delete, ref, timeout=OBJECT_TIMEOUT, node=node)
        except ServiceError as exc:
            # policyd on that node may have taken the deletion from the shared bucket already
            if exc.code != NOT_FOUND:
                raise
    print(f"{result['kind'].lower()}/{result['name']} {result['action']}")


def split_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    return (namespace, name) if sep else (DEFAULT_NAMESPACE, namespace)


def _runtime_fields(spec: dict) -> dict:
    """spec.interface, attachment and mtu, where a container runtime set them."""
    out = {k: spec[k] for k in ("attachment", "mtu") if spec.get(k)}
    if spec.get("interface", "eth0") != "eth0":
        out["interface"] = spec["interface"]
    return out


def pod_document(pod: dict, node: str) -> dict:
    spec, status = pod["spec"], pod["status"]
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": spec["name"], "namespace": spec["namespace"], "labels": spec["labels"]},
           "spec": {"netns": status["netns"], "nodeName": node, **_runtime_fields(spec)},
           "status": {"podIP": status["pod_ip"], "podIPs": [{"ip": status["pod_ip"]}],
                      "hostInterface": status["host_ifname"], "hostIfindex": status["host_ifindex"],
                      "endpointID": status["endpoint_id"], "identity": status["identity"],
                      "mac": status["pod_mac"], "phase": pod.get("phase", "Running")}}
    return doc


async def get(client: Client, what: str, namespace: str, output: str) -> int:
    if what in ("pods", "pod", "po"):
        pods = await placement.pods_by_node(client, namespace)
        if output in ("json", "yaml"):
            print(dump({"apiVersion": "v1", "kind": "List", "items": [pod_document(p, n) for n, p in pods]}, output))
            return 0
        headers = ["NAMESPACE", "NAME", "IP", "IDENTITY", "LABELS"]
        if output == "wide":
            headers += ["NODE", "INTERFACE", "ENDPOINT", "NETNS", "AGE"]
        rows = []
        for node, p in pods:
            s, st = p["spec"], p["status"]
            row = [s["namespace"], s["name"], st["pod_ip"], str(st["identity"]), labels_text(s["labels"])]
            if output == "wide":
                row += [node, st["host_ifname"], str(st["endpoint_id"]), st["netns"], age(st["created"])]
            rows.append(row)
        print(table(headers, rows))
        unknown = sorted({node for node, p in pods if p.get("phase") == placement.UNKNOWN})
        if unknown:
            print(f"not ready: {', '.join(unknown)}; pods there are shown as last recorded "
                  f"(phase Unknown)", file=sys.stderr)
    elif what in ("namespaces", "namespace", "ns"):
        items = await client.call(subjects.NAMESPACE_LIST, ListRequest())
        if output in ("json", "yaml"):
            docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n["name"], "labels": n["labels"]}}
                    for n in items]
            print(dump({"apiVersion": "v1", "kind": "List", "items": docs}, output))
            return 0
        print(table(["NAME", "LABELS"], [[n["name"], labels_text(n["labels"])] for n in items]))
    elif what in ("identities", "identity"):
        items = await client.call(subjects.IDENTITY_LIST, ListRequest())
        if output in ("json", "yaml"):
            print(dump(items, output))
            return 0
        print(table(["ID", "LABELS", "USED BY"],
                    [[str(i["id"]), labels_text(i["labels"]).replace("=,", ",").rstrip("="),
                      "other nodes" if i.get("remote") else str(len(i["owners"]))] for i in items]))
    elif what in ("policies", "policy", "networkpolicies", "netpol", "cnp", "ccnp"):
        items = await client.call(subjects.POLICY_LIST, ListRequest())
        if namespace:
            items = [d for d in items if d["metadata"].get("namespace", "") in (namespace, "")]
        if output in ("json", "yaml"):
            print(dump({"apiVersion": "v1", "kind": "List", "items": items}, output))
            return 0
        print(table(["NAMESPACE", "KIND", "NAME"],
                    [[d["metadata"].get("namespace", "") or "<cluster>", d["kind"], d["metadata"]["name"]]
                     for d in items]))
    elif what == "ipcache":
        items = await client.call(subjects.IPCACHE_LIST, ListRequest())
        if output in ("json", "yaml"):
            print(dump(items, output))
            return 0
        wide = output == "wide"
        print(table(["PREFIX", "IDENTITY", "SOURCE", *(["TUNNEL ENDPOINT"] * wide)],
                    [[i["cidr"], str(i["identity"]), i["source"], *([i.get("tunnel_endpoint") or "-"] * wide)]
                     for i in items]))
    else:
        raise ServiceError(INVALID, f"unknown resource {what!r} (pods, namespaces, policies, identities, ipcache)")
    return 0


async def netns_of(client: Client, ref: str) -> str:
    namespace, name = split_ref(ref)
    for _node, pod in await placement.pods_by_node(client, namespace):
        if pod["spec"]["name"] == name:
            return pod["status"]["netns"]
    raise ServiceError(NOT_FOUND, f'pod "{namespace}/{name}" not found')


def exec_in(netns_path: str, argv: list[str]) -> None:
    """Replace this process with ARGV running in the pod's network namespace."""
    if not argv:
        raise ServiceError(INVALID, "exec needs a command after --")
    os.execvp("nsenter", ["nsenter", f"--net={netns_path}", "--", *argv])
