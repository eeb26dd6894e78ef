"""The CNI commands, done by the node's services over NATS.

endpointd owns everything a pod is made of: ADD asks it for a pod in the container's netns
(pod.apply, which returns only once the endpoint entry, its policy entries and the programs
are in place), DEL deletes that pod, CHECK asks it to verify the plumbing (pod.check). The
plugin itself only reads the container's netns for the gateway it reports.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from services.cni.labels import runtime_labels
from services.cni.spec import (CHECK_FAILED, CONTAINER_UNKNOWN, INVALID_CONFIG, IO_FAILURE, NODE_REFUSED,
                               NOT_AVAILABLE, TRY_AGAIN_LATER, CniError, Environment, NetConf, attachment,
                               pod_name, pod_namespace, result, split_attachment)
from services.datapath.netns import default_gateway
from services.runtime.bus import Bus, Credentials, RemoteError, ServiceError
from services.runtime.config import ADMIN, ConfigError, load_config
from services.wire import subjects
from services.wire.messages import NOT_FOUND, UNAVAILABLE, Apply, ListRequest, ObjectRef, Pod, PodCheck

CONNECT_TIMEOUT = 2.0
REQUEST_TIMEOUT = 30.0         # a pod create waits for policyd and a program attach on a busy node
START_HINT = "start the node with `capillary up` (or `make up`), then retry"


def execute(env: Environment, conf: NetConf) -> dict | None:
    """Run command ENV.command (anything but VERSION) against the node; its result, if any."""
    return asyncio.run(_run(env, conf))


async def _run(env: Environment, conf: NetConf) -> dict | None:
    try:
        bus = await connect(conf)
    except CniError as exc:
        if env.command == "DEL" and exc.code == TRY_AGAIN_LATER and not os.path.exists(context_file(conf)):
            return None        # no node was ever set up here: nothing of ours can exist
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, exc.msg, exc.details) from None
        raise
    try:
        if env.command == "ADD":
            return await add(bus, env, conf, {**runtime_labels(env), **conf.labels})
        if env.command == "DEL":
            await delete(bus, env, conf)
        elif env.command == "CHECK":
            await check(bus, env, conf)
        elif env.command == "GC":
            await gc(bus, conf)
        elif env.command == "STATUS":
            await status(bus)
        return None
    finally:
        await bus.nc.close()


def context_file(conf: NetConf) -> Path:
    """The NATS context file: the config's ``context``, else the node config's admin context."""
    if conf.context:
        return Path(conf.context)
    try:
        node = load_config(conf.config or None)
    except ConfigError as exc:
        raise CniError(INVALID_CONFIG, f"config: {exc}") from None
    return node.credentials_path(ADMIN)


async def connect(conf: NetConf) -> Bus:
    path = context_file(conf)
    if not path.exists():
        raise CniError(TRY_AGAIN_LATER, f"the capillary node is not running (no NATS context at {path})",
                       START_HINT)
    try:
        creds = Credentials.load(path)
        return await Bus.connect(creds, name=f"capillary-cni@{os.getpid()}",
                                 connect_timeout=CONNECT_TIMEOUT, retry=False)
    except (KeyError, ServiceError) as exc:
        code = TRY_AGAIN_LATER if getattr(exc, "code", "") == UNAVAILABLE else INVALID_CONFIG
        raise CniError(code, f"the capillary node is not reachable: {exc}", START_HINT) from None


async def call(bus: Bus, subject: str, message=None) -> Any:
    try:
        return await bus.request(subject, message, timeout=REQUEST_TIMEOUT)
    except RemoteError as exc:
        if exc.code == UNAVAILABLE:
            raise CniError(TRY_AGAIN_LATER, f"the capillary node is not ready: {exc.message}", START_HINT) from None
        raise CniError(NODE_REFUSED, f"capillary refused: {exc.message}") from None


async def find(bus: Bus, handle: str) -> Pod | None:
    """The pod made for attachment HANDLE (network, container id, ifname), if any."""
    for raw in await call(bus, subjects.POD_LIST, ListRequest()):
        pod = Pod.from_wire(raw)
        if pod.spec.attachment == handle:
            return pod
    return None


def _document(env: Environment, conf: NetConf, labels: dict[str, str]) -> dict:
    spec: dict[str, Any] = {"netns": env.netns, "interface": env.ifname,
                            "attachment": attachment(conf.name, env.container_id, env.ifname)}
    if conf.mtu:
        spec["mtu"] = conf.mtu
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(env), "namespace": pod_namespace(env, conf), "labels": labels},
            "spec": spec}


def _gateway(netns: str, ifname: str) -> str:
    """The container's default gateway through IFNAME, read from its netns (the node's router)."""
    try:
        gateway = default_gateway(netns, ifname)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read the routes in {netns}: {exc}") from None
    if gateway is None:
        raise CniError(IO_FAILURE, f"no default route through {ifname} in {netns}")
    return gateway


async def add(bus: Bus, env: Environment, conf: NetConf, labels: dict[str, str]) -> dict:
    doc = _document(env, conf, labels)
    namespace = doc["metadata"]["namespace"]
    created = await _ensure_namespace(bus, namespace)
    try:
        await call(bus, subjects.POD_APPLY, Apply(doc))
    except CniError:
        if created:       # nothing half-made: the namespace was made for this pod only
            await bus.request(subjects.NAMESPACE_DELETE, ObjectRef(namespace), timeout=REQUEST_TIMEOUT)
        raise
    pod = await find(bus, doc["spec"]["attachment"])
    if pod is None:
        raise CniError(NODE_REFUSED, f"pod {namespace}/{doc['metadata']['name']} vanished right after ADD")
    try:
        gateway = _gateway(pod.status.netns, env.ifname)
    except CniError:
        await call(bus, subjects.POD_DELETE, ObjectRef(pod.spec.name, pod.spec.namespace))
        raise
    return result(conf.cni_version, pod.to_wire(), env.ifname, gateway, conf.mtu)


async def _ensure_namespace(bus: Bus, namespace: str) -> bool:
    """Make NAMESPACE unless it exists; whether it was made."""
    names = {raw["name"] for raw in await call(bus, subjects.NAMESPACE_LIST, ListRequest())}
    if namespace in names:
        return False
    await call(bus, subjects.NAMESPACE_APPLY,
               Apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
    return True


async def delete(bus: Bus, env: Environment, conf: NetConf) -> None:
    """Idempotent: an attachment with no pod (already deleted, never made) is success."""
    pod = await find(bus, attachment(conf.name, env.container_id, env.ifname))
    if pod is not None:
        await _delete_pod(bus, pod)


async def _delete_pod(bus: Bus, pod: Pod) -> None:
    try:
        await bus.request(subjects.POD_DELETE, ObjectRef(pod.spec.name, pod.spec.namespace),
                          timeout=REQUEST_TIMEOUT)
    except RemoteError as exc:
        if exc.code != NOT_FOUND:
            await call(bus, subjects.POD_DELETE, ObjectRef(pod.spec.name, pod.spec.namespace))


async def check(bus: Bus, env: Environment, conf: NetConf) -> None:
    handle = attachment(conf.name, env.container_id, env.ifname)
    pod = await find(bus, handle)
    if pod is None:
        raise CniError(CONTAINER_UNKNOWN, f"no capillary pod for container {env.container_id} "
                                          f"interface {env.ifname} on network {conf.name}")
    problems = []
    if pod.status.netns != env.netns:
        problems.append(f"the pod's netns is {pod.status.netns}, not {env.netns}")
    reply = PodCheck.from_wire(await call(bus, subjects.POD_CHECK, ObjectRef(pod.spec.name, pod.spec.namespace)))
    problems += reply.problems
    if problems:
        raise CniError(CHECK_FAILED, f"pod {reply.pod}: " + "; ".join(problems))


async def gc(bus: Bus, conf: NetConf) -> list[str]:
    """Delete this network's CNI pods whose (container id, ifname) is not a valid attachment."""
    valid = set(conf.valid_attachments)
    removed = []
    for raw in await call(bus, subjects.POD_LIST, ListRequest()):
        pod = Pod.from_wire(raw)
        parts = split_attachment(pod.spec.attachment)
        if parts is None or parts[0] != conf.name or (parts[1], parts[2]) in valid:
            continue
        await _delete_pod(bus, pod)
        removed.append(f"{pod.spec.namespace}/{pod.spec.name}")
    return removed


async def status(bus: Bus) -> None:
    """Fails with code 50 unless every service answers and is ready."""
    for service in subjects.SERVICES:
        try:
            health = await bus.request(subjects.health(service), timeout=CONNECT_TIMEOUT)
        except RemoteError as exc:
            raise CniError(NOT_AVAILABLE, f"capillary is not available: {service}: {exc.message}",
                           START_HINT) from None
        if not health.get("ready"):
            raise CniError(NOT_AVAILABLE, f"capillary is not available: {service} is not ready "
                                          f"({health.get('detail') or 'starting'})")
