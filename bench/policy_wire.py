"""What bench/policy.py needs from a running node: policy documents, policy requests over
NATS (nats-py + msgpack, with the node's admin credentials, as any client would send them),
policyd's own request timings, and read-only looks at the pinned policy map."""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nats
import yaml

from bench.common import Node
from services.datapath.maps.policy import PolicyMap
from services.runtime.bus import Credentials
from services.runtime.config import load_config
from services.runtime.natsserver import ADMIN
from services.wire import codec, subjects
from services.wire.messages import Apply, ObjectRef

CNP = "CiliumNetworkPolicy"
REQUEST_TIMEOUT = 60.0      # seconds; a 10,000-entry policy is written entry by entry


def cnp(name: str, namespace: str, subject: dict[str, str], ingress: list[dict]) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": CNP, "metadata": {"name": name, "namespace": namespace},
            "spec": {"endpointSelector": {"matchLabels": subject}, "ingress": ingress}}


def allow_from(labels: dict[str, str], ports: list[int]) -> dict:
    """An ingress rule: pods with LABELS (in the policy's namespace) to each TCP port of PORTS."""
    return {"fromEndpoints": [{"matchLabels": labels}],
            "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}]}


class PolicyBus:
    """policy.apply / policy.delete requests; raises on an error reply."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc

    @classmethod
    async def connect(cls, node: Node) -> "PolicyBus":
        creds = Credentials.load(load_config(str(node.config_path)).credentials_path(ADMIN))
        nc = await nats.connect(creds.url, user=creds.user, password=creds.password, name="capillary-bench-policy",
                                allow_reconnect=False, inbox_prefix=subjects.inbox_prefix(creds.user).encode())
        return cls(nc)

    async def close(self) -> None:
        await self.nc.close()

    async def _request(self, subject: str, body: dict) -> dict:
        msg = await self.nc.request(subject, codec.encode(body), timeout=REQUEST_TIMEOUT)
        reply = codec.decode(msg.data)
        if not reply.get("ok"):
            raise RuntimeError(f"{subject}: {reply.get('error')}")
        return reply["result"]

    async def apply(self, document: dict) -> dict:
        """The reply's result: kind, name, action, revision, written, removed, ..."""
        return await self._request(subjects.POLICY_APPLY, Apply(document).to_wire())

    async def delete(self, name: str, namespace: str) -> dict:
        return await self._request(subjects.POLICY_DELETE, ObjectRef(name, namespace, CNP).to_wire())


def yaml_docs(documents: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in documents)


# ---- looking at the node -------------------------------------------------------------------

@dataclass(frozen=True)
class PodInfo:
    netns: str
    ip: str
    endpoint_id: int
    identity: int


def pod_info(pods: dict[str, dict], ref: str) -> PodInfo:
    pod = pods[ref]
    status = pod["status"]
    return PodInfo(pod["spec"]["netns"], status["podIP"], status["endpointID"], status["identity"])


_DURATION = re.compile(r'^capillary_bus_request_duration_seconds_sum\{subject="([^"]+)"\} (\S+)$', re.M)


def handler_seconds(node: Node) -> dict[str, float]:
    """policyd's cumulative time answering policy.apply and policy.delete (its metrics)."""
    port = yaml.safe_load(node.config_path.read_text())["metrics"]["policyd"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sums = {subject: float(value) for subject, value in _DURATION.findall(text)}
    return {"apply": sums.get(subjects.POLICY_APPLY, 0.0), "delete": sums.get(subjects.POLICY_DELETE, 0.0)}


def policy_entries(node: Node) -> dict:
    """Entries in the node's policy map: total and per endpoint id."""
    pm = PolicyMap(Path(node.bpf_root))
    try:
        keys = list(pm.all())
    finally:
        pm.close()
    by_endpoint: dict[int, int] = {}
    for key in keys:
        by_endpoint[key.endpoint_id] = by_endpoint.get(key.endpoint_id, 0) + 1
    return {"total": len(keys), "by_endpoint": by_endpoint}


def entry_packets(node: Node, endpoint_id: int, identity: int, port: int) -> int | None:
    """Packets counted on the ingress entry of ENDPOINT_ID for IDENTITY -> TCP PORT (None: no
    such entry). The datapath counts a lookup, i.e. a connection's first packet."""
    pm = PolicyMap(Path(node.bpf_root))
    try:
        for key, counted in pm.all().items():
            if (key.endpoint_id, key.egress, key.identity, key.protocol, key.port) == \
                    (endpoint_id, False, identity, 6, port):
                return counted.packets
        return None
    finally:
        pm.close()
