"""The CNI commands, done by the node's services over NATS.

endpointd owns everything a pod is made of: ADD asks it for a pod in the container's netns
(pod.apply, which returns only once the endpoint entry, its policy entries and the programs
are in place), DEL deletes that pod, CHECK asks it to verify the plumbing (pod.check) and
compares the pod with the ADD's result (prevResult). The plugin itself reads the container's
netns only for CHECK (the gateway of its default route). It calls as the node's `cni` NATS user, which
may call endpointd's pod and namespace subjects and the services' health, and nothing else.
"""
from __future__ import annotations

import os

from services.cni import client
from services.cni.client import NodeClient
from services.cni.labels import runtime_labels
from services.cni.spec import (CHECK_FAILED, CONTAINER_UNKNOWN, INVALID_CONFIG, IO_FAILURE, NODE_REFUSED,
                               NOT_AVAILABLE, TRY_AGAIN_LATER, CniError, Environment, NetConf, attachment,
                               pod_name, pod_namespace, result, result_problems, split_attachment)
from services.runtime.credentials import Credentials, RemoteError, ServiceError
from services.wire import subjects
from services.wire.codes import NOT_FOUND, UNAVAILABLE

CONNECT_TIMEOUT = 2.0
REQUEST_TIMEOUT = 30.0         # a pod create waits for policyd and a program attach on a busy node
START_HINT = "start the node with `capillary up` (or `make up`), then retry"


def execute(env: Environment, conf: NetConf) -> dict | None:
    """Run command ENV.command (anything but VERSION) against the node; its result, if any."""
    try:
        bus = connect(conf)
    except CniError as exc:
        if env.command == "DEL" and exc.code == TRY_AGAIN_LATER and not os.path.exists(context_file(conf)):
            return None        # no node was ever set up here: nothing of ours can exist
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, exc.msg, exc.details) from None
        raise
    try:
        if env.command == "ADD":
            return add(bus, env, conf, {**runtime_labels(env), **conf.labels})
        if env.command == "DEL":
            delete(bus, env, conf)
        elif env.command == "CHECK":
            check(bus, env, conf)
        elif env.command == "GC":
            gc(bus, conf)
        elif env.command == "STATUS":
            status(bus)
        return None
    finally:
        bus.close()


def context_file(conf: NetConf) -> str:
    """The NATS context file: the config's ``context``, else the node config's `cni` context
    (reading the node config costs YAML and the config's schema: naming the context is faster)."""
    if conf.context:
        return conf.context
    from services.runtime.config import ConfigError, load_config
    try:
        node = load_config(conf.config or None)
    except ConfigError as exc:
        raise CniError(INVALID_CONFIG, f"config: {exc}") from None
    return str(node.credentials_path(subjects.CNI_CLIENT))


def connect(conf: NetConf) -> NodeClient:
    path = context_file(conf)
    if not os.path.exists(path):
        raise CniError(TRY_AGAIN_LATER, f"the capillary node is not running (no NATS context at {path})",
                       START_HINT)
    try:
        creds = Credentials.load(path)
        return NodeClient.connect(creds, name=f"capillary-cni@{os.getpid()}", timeout=CONNECT_TIMEOUT)
    except ServiceError as exc:
        code = TRY_AGAIN_LATER if exc.code == UNAVAILABLE else INVALID_CONFIG
        raise CniError(code, f"the capillary node is not reachable: {exc}", START_HINT) from None


def call(bus: NodeClient, subject: str, message: dict | None = None):
    try:
        return bus.request(subject, message, timeout=REQUEST_TIMEOUT)
    except RemoteError as exc:
        raise refused(exc) from None


def refused(exc: RemoteError) -> CniError:
    if exc.code == UNAVAILABLE:
        return CniError(TRY_AGAIN_LATER, f"the capillary node is not ready: {exc.message}", START_HINT)
    return CniError(NODE_REFUSED, f"capillary refused: {exc.message}")


def find(bus: NodeClient, handle: str) -> dict | None:
    """The pod (messages.Pod, as sent) made for attachment HANDLE (network, container id,
    ifname), if any."""
    for pod in call(bus, subjects.POD_LIST, client.list_request()):
        if pod["spec"]["attachment"] == handle:
            return pod
    return None


def _document(env: Environment, conf: NetConf, labels: dict[str, str]) -> dict:
    spec: dict = {"netns": env.netns, "interface": env.ifname,
                  "attachment": attachment(conf.name, env.container_id, env.ifname)}
    if conf.mtu:
        spec["mtu"] = conf.mtu
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(env), "namespace": pod_namespace(env, conf), "labels": labels},
            "spec": spec}


def _gateway(netns: str, ifname: str) -> str | None:
    """The container's default gateway through IFNAME, read from its netns (the node's
    router), or None when it has no such route (CHECK; ADD has it from endpointd)."""
    from services.datapath.netns import default_gateway   # ctypes: only where a command reads a netns
    try:
        return default_gateway(netns, ifname)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read the routes in {netns}: {exc}") from None


def add(bus: NodeClient, env: Environment, conf: NetConf, labels: dict[str, str]) -> dict:
    """One request: endpointd's reply (messages.PodApplied) holds the pod as made and the
    router its default route goes through, which is all the result needs."""
    doc = _document(env, conf, labels)
    applied = _apply_pod(bus, doc)
    pod = applied.get("pod") if isinstance(applied, dict) else None
    if not isinstance(pod, dict) or not applied.get("gateway"):
        meta = doc["metadata"]
        _delete_pod(bus, {"spec": {"name": meta["name"], "namespace": meta["namespace"]}})
        raise CniError(NODE_REFUSED, "endpointd's reply to pod.apply names no pod or gateway "
                                     "(is the node older than this plugin?); the pod was deleted again")
    return result(conf.cni_version, pod, env.ifname, applied["gateway"], conf.mtu)


def _apply_pod(bus: NodeClient, doc: dict) -> dict:
    """Apply DOC and return the reply. Its namespace is made only when endpointd says it does
    not exist (one request fewer for every ADD but a namespace's first), and deleted again if
    the pod then fails: nothing half-made."""
    try:
        return bus.request(subjects.POD_APPLY, client.apply(doc), timeout=REQUEST_TIMEOUT)
    except RemoteError as exc:
        if exc.code != NOT_FOUND or "namespace" not in exc.message:
            raise refused(exc) from None
    namespace = doc["metadata"]["namespace"]
    call(bus, subjects.NAMESPACE_APPLY,
         client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
    try:
        return call(bus, subjects.POD_APPLY, client.apply(doc))
    except CniError:
        bus.request(subjects.NAMESPACE_DELETE, client.ref(namespace), timeout=REQUEST_TIMEOUT)
        raise


def delete(bus: NodeClient, env: Environment, conf: NetConf) -> None:
    """Idempotent: an attachment with no pod (already deleted, never made) is success."""
    pod = find(bus, attachment(conf.name, env.container_id, env.ifname))
    if pod is not None:
        _delete_pod(bus, pod)


def _delete_pod(bus: NodeClient, pod: dict) -> None:
    message = client.ref(pod["spec"]["name"], pod["spec"]["namespace"])
    try:
        bus.request(subjects.POD_DELETE, message, timeout=REQUEST_TIMEOUT)
    except RemoteError as exc:
        if exc.code != NOT_FOUND:
            call(bus, subjects.POD_DELETE, message)


def check(bus: NodeClient, env: Environment, conf: NetConf) -> None:
    """The kernel's side (endpointd's pod.check: veth, address, routes, endpoint entry,
    programs) and the ADD's result (prevResult: interfaces, MACs, addresses) against the pod."""
    pod = find(bus, attachment(conf.name, env.container_id, env.ifname))
    if pod is None:
        raise CniError(CONTAINER_UNKNOWN, f"no capillary pod for container {env.container_id} "
                                          f"interface {env.ifname} on network {conf.name}")
    status = pod["status"]
    problems = []
    if status["netns"] != env.netns:
        problems.append(f"the pod's netns is {status['netns']}, not {env.netns}")
    reply = call(bus, subjects.POD_CHECK, client.ref(pod["spec"]["name"], pod["spec"]["namespace"]))
    problems += reply["problems"]
    if status["netns"] == env.netns:
        listed = [ip.get("gateway") for ip in conf.prev_result.get("ips", [])]
        gateway = _gateway(env.netns, env.ifname) or next(iter(listed), None) or ""
        problems += result_problems(conf.prev_result, result(conf.cni_version, pod, env.ifname, gateway, conf.mtu))
    if problems:
        raise CniError(CHECK_FAILED, f"pod {reply['pod']}: " + "; ".join(problems))


def gc(bus: NodeClient, conf: NetConf) -> list[str]:
    """Delete this network's CNI pods whose (container id, ifname) is not a valid attachment."""
    valid = set(conf.valid_attachments)
    removed = []
    for pod in call(bus, subjects.POD_LIST, client.list_request()):
        parts = split_attachment(pod["spec"]["attachment"])
        if parts is None or parts[0] != conf.name or (parts[1], parts[2]) in valid:
            continue
        _delete_pod(bus, pod)
        removed.append(f"{pod['spec']['namespace']}/{pod['spec']['name']}")
    return removed


def status(bus: NodeClient) -> None:
    """Fails with code 50 unless every service answers and is ready."""
    for service in subjects.SERVICES:
        try:
            health = bus.request(subjects.health(service), None, timeout=CONNECT_TIMEOUT)
        except RemoteError as exc:
            raise CniError(NOT_AVAILABLE, f"capillary is not available: {service}: {exc.message}",
                           START_HINT) from None
        if not health.get("ready"):
            raise CniError(NOT_AVAILABLE, f"capillary is not available: {service} is not ready "
                                          f"({health.get('detail') or 'starting'})")
