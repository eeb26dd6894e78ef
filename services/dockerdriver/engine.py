"""What the Docker Engine knows of a container: its name and labels, for a pod's identity.

Join names only the network, the endpoint and a sandbox key (not the container). The network's
inspect lists its endpoints with their names, which are the containers' names; the container
is starting and dockerd holds its lock, so a container inspect would wait for the start to
finish: the list endpoint (dockerd's lock-free view) gives its labels instead. Blocking: call
it from a thread.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import docker
from docker.errors import DockerException

from services.wire.manifests import DNS_LABEL, LABEL_VALUE, valid_label_key

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
PLAIN_NAMESPACE = "docker"
# compose's bookkeeping labels: per replica, per run or per checkout, never a workload's identity.
VOLATILE = ("com.docker.compose.container-number", "com.docker.compose.config-hash",
            "com.docker.compose.oneoff", "com.docker.compose.version", "com.docker.compose.project.")
TIMEOUT = 10


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Container:
    id: str
    name: str            # the pod's name: the container's name as a DNS label
    namespace: str       # the compose project, else "docker"
    labels: dict[str, str]


def dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower())[:63].strip("-")


def pod_labels(labels: dict) -> dict[str, str]:
    return {k: v for k, v in labels.items()
            if isinstance(k, str) and isinstance(v, str) and not k.startswith(VOLATILE)
            and valid_label_key(k) and len(v) <= 63 and LABEL_VALUE.match(v)}


def container_for_endpoint(host: str, network_id: str, endpoint_id: str) -> Container:
    """The container that endpoint ENDPOINT_ID of network NETWORK_ID belongs to."""
    try:
        api = docker.APIClient(base_url=host, timeout=TIMEOUT)
        try:
            members = api.inspect_network(network_id).get("Containers") or {}
            name = next((m.get("Name", "") for m in members.values() if m.get("EndpointID") == endpoint_id), "")
            if not name:
                raise EngineError(f"network {network_id[:12]} has no endpoint {endpoint_id[:12]}")
            found = api.containers(all=True, filters={"name": f"^/{re.escape(name)}$"})
        finally:
            api.close()
    except DockerException as exc:
        raise EngineError(f"cannot ask the Docker Engine at {host}: {exc}") from None
    if len(found) != 1:
        raise EngineError(f"the Docker Engine at {host} has {len(found)} containers named {name}")
    item = found[0]
    labels = item.get("Labels") or {}
    project = dns_label(labels.get(PROJECT, ""))
    namespace = project if project and DNS_LABEL.match(project) else PLAIN_NAMESPACE
    return Container(item["Id"], dns_label(name) or f"c-{item['Id'][:12]}", namespace, pod_labels(labels))
