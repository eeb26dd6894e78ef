"""A KV read that comes back empty or fails is not "nothing stored": endpointd's reconcile and
policyd's start-up read real buckets (a real nats-server), with nats-py's spurious
NoKeysError forced (the race is timing-dependent), and with the bucket made unreadable.
The kernel side is a recorder: these tests are about what the services decide to do."""
import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import CollectorRegistry, Gauge

from services.endpointd.ipam import IPAM
from services.policyd.identity import IdentityAllocator

from services.endpointd.service import EndpointService
from services.policyd.service import PolicyService
from services.runtime.bus import StateUnreadable
from services.runtime.config import NodeConfig
from services.wire import codec, subjects
from services.wire.messages import EndpointPolicy, Identity, NamespaceSpec, Pod, PodSpec, PodStatus
from tests.privileged.test_kv_read import _spurious_no_keys
from tests.support.jetstream import connect, jetstream_server


@pytest.fixture
def nats_url(tmp_path):
    with jetstream_server(tmp_path) as url:
        yield url


def pod(name: str, n: int) -> Pod:
    status = PodStatus(f"10.200.0.{10 + n}", f"lxc{n}", 100 + n, "02:00:00:00:00:01", "02:00:00:00:00:02",
                       f"/run/netns/{name}", True, n, 256 + n, 0.0)
    return Pod(PodSpec(name, "default", {"app": name}), status)


class Worker:
    async def run(self, fn, *args):
        return fn(*args)


class Plumber:
    def __init__(self) -> None:
        self.orphans_called_with = None

    def ensure(self, _spec, status):
        return status

    def attach(self, _status):
        pass

    def orphans(self, ifnames, ips, netns, endpoint_ids):
        self.orphans_called_with = (ifnames, ips, netns, endpoint_ids)
        return sorted(f"link {i}" for i in {"lxc1", "lxc2"} - ifnames)


async def endpointd(url: str) -> EndpointService:
    """An endpointd whose KV is real and whose kernel and peers are recorders."""
    svc = EndpointService(NodeConfig())
    svc.bus = await connect(url)
    svc.ipam, svc.namespaces, svc.pods = IPAM(svc.config.podCIDR), {}, {}
    svc.worker, svc.plumber, svc._lock = Worker(), Plumber(), asyncio.Lock()
    svc.pods_gauge = Gauge("pods", "", registry=CollectorRegistry())
    svc.kv_ns = await svc.bus.kv(subjects.BUCKET_NAMESPACES, create=True)
    svc.kv_pods = await svc.bus.kv(subjects.BUCKET_PODS, create=True)
    svc.calls = []

    async def call(subject, message, timeout=5.0):
        svc.calls.append((subject, message))
        return {}
    svc._call = call
    return svc


async def store_pods(svc: EndpointService) -> None:
    await svc.kv_ns.put("default", codec.encode(NamespaceSpec("default", {}).to_wire()))
    for n, name in ((1, "a"), (2, "b")):
        await svc.kv_pods.put(f"default/{name}", codec.encode(pod(name, n).to_wire()))


def test_a_spurious_empty_read_does_not_make_endpointd_delete_its_pods(nats_url):
    async def body():
        svc = await endpointd(nats_url)
        try:
            await store_pods(svc)
            _spurious_no_keys(svc.kv_pods)
            _spurious_no_keys(svc.kv_ns)
            await svc._reconcile()
            return svc
        finally:
            await svc.bus.drain()
    svc = asyncio.run(body())
    assert svc.plumber.orphans_called_with[0] == {"lxc1", "lxc2"}, "endpointd removed live pods"
    assert set(svc.pods) == {"default/a", "default/b"}
    synced = [m.endpoint_id for s, m in svc.calls if s == subjects.POLICY_ENDPOINT_SYNC]
    assert sorted(synced) == [1, 2], "restored pods must be announced to policyd again"


def test_a_reconnect_reconcile_keeps_every_pod(nats_url):
    async def body():
        svc = await endpointd(nats_url)
        try:
            await store_pods(svc)
            await svc._reconcile()
            await svc._reconcile()                 # what a NATS reconnect runs
            return svc
        finally:
            await svc.bus.drain()
    svc = asyncio.run(body())
    assert svc.plumber.orphans_called_with[0] == {"lxc1", "lxc2"}


class NoStreamInfo:
    async def stream_info(self, *_args, **_kwargs):
        raise NatsTimeout


def test_an_unreadable_bucket_stops_the_reconcile_before_it_removes_anything(nats_url):
    async def body():
        svc = await endpointd(nats_url)
        try:
            await store_pods(svc)
            svc.bus.js = NoStreamInfo()
            with pytest.raises(StateUnreadable, match="cannot read KV bucket capillary_namespaces"):
                await svc._reconcile()
            return svc
        finally:
            await svc.bus.drain()
    svc = asyncio.run(body())
    assert svc.plumber.orphans_called_with is None and svc.calls == []


async def policyd(url: str) -> PolicyService:
    svc = PolicyService(NodeConfig())
    svc.bus = await connect(url)
    svc.identities, svc.policies, svc.broken = IdentityAllocator(), {}, {}
    svc.kv_ids = await svc.bus.kv(subjects.BUCKET_IDENTITIES, create=True)
    svc.kv_policies = await svc.bus.kv(subjects.BUCKET_POLICIES, create=True, history=5)
    svc.kv_endpoints = await svc.bus.kv(subjects.BUCKET_POLICY_ENDPOINTS, create=True)
    return svc


def test_a_spurious_empty_read_does_not_make_policyd_plan_without_identities(nats_url):
    async def body():
        svc = await policyd(nats_url)
        try:
            await svc.kv_ids.put("256", codec.encode(Identity(256, {"k8s:app": "a"}, ["pod:default/a"]).to_wire()))
            await svc.kv_endpoints.put("1", codec.encode(EndpointPolicy(1, 256).to_wire()))
            for kv in (svc.kv_ids, svc.kv_policies, svc.kv_endpoints):
                _spurious_no_keys(kv)
            endpoints = await svc._load()
            return svc, endpoints
        finally:
            await svc.bus.drain()
    svc, endpoints = asyncio.run(body())
    assert set(svc.identities.by_id) == {256}
    assert set(endpoints) == {1} and endpoints[1].identity == 256


def test_policyd_refuses_to_start_from_an_unreadable_bucket(nats_url):
    async def body():
        svc = await policyd(nats_url)
        try:
            svc.bus.js = NoStreamInfo()
            with pytest.raises(StateUnreadable):
                await svc._load()
        finally:
            await svc.bus.drain()
    asyncio.run(body())
