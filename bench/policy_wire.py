"""What bench/policy.py needs from a running node: policy documents, policy requests over
NATS (nats-py + msgpack, with the node's admin credentials, as any client would send them),
policyd's own request timings, and read-only looks at the pinned policy map."""
from __future__ import annotations

import asyncio
import re
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nats
import yaml

from bench.common import Node
from services.datapath.maps.policy import PREFIX_PORT_BASE, Key, PolicyMap
from services.datapath.numbers import POLICY_DEFAULT
from services.policyd.compiler import Endpoint, Universe
from services.policyd.enforcer import Enforcer
from services.policyd.identity import RESERVED
from services.policyd.parse import parse_policy
from services.runtime.bus import Credentials, kv_items
from services.runtime.config import load_config
from services.runtime.natsserver import ADMIN
from services.wire import codec, subjects
from services.wire.messages import Apply, EndpointPolicy, ListRequest, ObjectRef

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

    def __init__(self, nc: nats.NATS, timeout: float = REQUEST_TIMEOUT) -> None:
        self.nc = nc
        self.timeout = timeout

    @classmethod
    async def connect(cls, node: Node, timeout: float = REQUEST_TIMEOUT) -> "PolicyBus":
        creds = Credentials.load(load_config(str(node.config_path)).credentials_path(ADMIN))
        nc = await nats.connect(creds.url, user=creds.user, password=creds.password, name="capillary-bench-policy",
                                allow_reconnect=False, inbox_prefix=subjects.inbox_prefix(creds.user).encode())
        return cls(nc, timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def request(self, subject: str, body: dict | bytes) -> dict:
        """BODY: a message, or one already encoded."""
        data = body if isinstance(body, bytes) else codec.encode(body)
        msg = await self.nc.request(subject, data, timeout=self.timeout)
        reply = codec.decode(msg.data)
        if not reply.get("ok"):
            raise RuntimeError(f"{subject}: {reply.get('error')}")
        return reply["result"]

    async def apply(self, document: dict) -> dict:
        """The reply's result: kind, name, action, revision, written, removed, ..."""
        return await self.request(subjects.POLICY_APPLY, Apply(document).to_wire())

    async def delete(self, name: str, namespace: str) -> dict:
        return await self.request(subjects.POLICY_DELETE, ObjectRef(name, namespace, CNP).to_wire())

    async def identities(self) -> list[dict]:
        return await self.request(subjects.IDENTITY_LIST, ListRequest().to_wire())

    async def endpoints(self) -> dict[int, Endpoint]:
        """policyd's own record of the node's endpoints, from its KV bucket."""
        js = self.nc.jetstream()
        kv = await js.key_value(subjects.BUCKET_POLICY_ENDPOINTS)
        out = {}
        for raw in (await kv_items(js, kv)).values():
            ep = EndpointPolicy.from_wire(raw)
            out[ep.endpoint_id] = Endpoint(ep.endpoint_id, ep.identity, ep.audit)
        return out


def yaml_docs(documents: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in documents)


# ---- looking at the node -------------------------------------------------------------------

@dataclass(frozen=True)
class PodInfo:
    name: str
    netns: str
    ip: str
    endpoint_id: int
    identity: int


def pod_info(pods: dict[str, dict], ref: str) -> PodInfo:
    pod = pods[ref]
    status = pod["status"]
    return PodInfo(pod["metadata"]["name"], pod["spec"]["netns"], status["podIP"], status["endpointID"],
                   status["identity"])


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
    such entry). The datapath counts a lookup, i.e. a connection's first packet. One lookup
    of the full-length key, not a walk of the map (50k entries take seconds to walk)."""
    pm = PolicyMap(Path(node.bpf_root))
    try:
        # An LPM lookup falls back to the endpoint's default entry when the exact one is absent.
        entry = pm.map.get(Key(endpoint_id, False, identity, 6, port, PREFIX_PORT_BASE + 16).raw())
        return None if entry is None or entry.flags & POLICY_DEFAULT else entry.packets
    finally:
        pm.close()


class EntryWatch:
    """Polls the policy map from a thread until the ingress entry ENDPOINT_ID <- IDENTITY on
    TCP PORT appears (present=True) or is gone again, and keeps time.monotonic() of the first
    look that saw it so: when policyd's write landed, to within POLL (and the thread's wake-up)."""

    POLL = 0.0005
    SWITCH_INTERVAL = 0.0002   # Python's default 5 ms GIL hand-over would delay the thread's looks

    def __init__(self, node: Node, endpoint_id: int, identity: int, port: int, present: bool,
                 deadline: float = 10.0) -> None:
        self.map = PolicyMap(Path(node.bpf_root))
        self.key = Key(endpoint_id, False, identity, 6, port, PREFIX_PORT_BASE + 16).raw()
        self.present, self.deadline = present, deadline
        self.seen: float | None = None
        self._stop = threading.Event()
        sys.setswitchinterval(self.SWITCH_INTERVAL)
        self.thread = threading.Thread(target=self._poll, name="entry-watch", daemon=True)
        self.thread.start()

    def _there(self) -> bool:
        # An LPM lookup falls back to the endpoint's default entry when the exact one is absent.
        entry = self.map.map.get(self.key)
        return entry is not None and not entry.flags & POLICY_DEFAULT

    def _poll(self) -> None:
        end = time.monotonic() + self.deadline
        while time.monotonic() < end and not self._stop.is_set():
            if self._there() == self.present:
                self.seen = time.monotonic()
                return
            self._stop.wait(self.POLL)

    def wait(self) -> float:
        """The monotonic time the entry was first seen in the wanted state."""
        self.thread.join(self.deadline + 1)
        if self.seen is None:
            raise RuntimeError(f"policy entry never became {'present' if self.present else 'absent'}")
        return self.seen

    def close(self) -> None:
        """Stop looking (if still) and close the map; safe to call twice."""
        self._stop.set()
        self.thread.join(self.deadline + 1)
        if self.map is not None:
            self.map.close()
            self.map = None


def replay_plan(node: Node, documents: list[dict], runs: int = 3) -> dict:
    """policyd's compile step replayed in this process on the node's live map, read only,
    for DOCUMENTS (the last one is the probe policy) and the node's identities: where an
    apply's time goes. policyd reads the map once at start-up; an apply recompiles only
    the endpoints the changed policy selects. Medians of RUNS, in ms."""
    async def fetch() -> tuple[list[dict], dict[int, Endpoint]]:
        bus = await PolicyBus.connect(node)
        try:
            return await bus.identities(), await bus.endpoints()
        finally:
            await bus.close()

    identities, endpoints = asyncio.run(fetch())
    universe = Universe({i["id"]: i["labels"] for i in identities if i["id"] not in RESERVED})
    policies = [parse_policy(d).policy for d in documents]
    config = load_config(str(node.config_path))
    began = time.perf_counter()
    enforcer = Enforcer(PolicyMap(Path(node.bpf_root)), config.maps.policy, config.policy.enforcement, endpoints)
    read = (time.perf_counter() - began) * 1000
    applies, fulls = [], []
    try:
        entries = sum(len(e) for e in enforcer.state.values())
        for _ in range(runs):
            began = time.perf_counter()
            enforcer.plan(policies, Universe(universe.identities), changed=policies[-1:])
            applies.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            enforcer.plan(policies, Universe(universe.identities))
            fulls.append((time.perf_counter() - began) * 1000)
    finally:
        enforcer.map.close()
    return {"entries": entries, "endpoints": len(endpoints), "policies": len(policies),
            "map_read_ms": read, "apply_plan_ms": statistics.median(applies),
            "full_plan_ms": statistics.median(fulls)}
