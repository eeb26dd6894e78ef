"""policyd writes KV before the map, so what is enforced never outlives what is stored: a
failed KV write changes nothing, and a crash between the two converges at the next start.
Real KV buckets (a real nats-server); the policy map is the dict-backed fake."""
import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.datapath.maps.policy import FakePolicyMap
from services.policyd.compiler import Endpoint
from services.policyd.enforcer import Enforcer
from services.policyd.identity import Entry, IdentityAllocator
from services.policyd.service import PolicyService, kv_key
from services.runtime.config import NodeConfig
from services.wire import codec, subjects
from services.wire.labels import identity_labels, namespace_labels
from services.wire.messages import Apply, EndpointPolicy, Identity, ObjectRef
from tests.support.jetstream import connect, jetstream_server

WEB = 256
POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
          "metadata": {"name": "web", "namespace": "x"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}


@pytest.fixture
def nats_url(tmp_path):
    with jetstream_server(tmp_path) as url:
        yield url


async def policyd(url: str, fake: FakePolicyMap) -> PolicyService:
    """policyd as its start() leaves it, over real KV and FAKE."""
    svc = PolicyService(NodeConfig())
    svc.bus = await connect(url)
    svc._lock = asyncio.Lock()
    svc.identities, svc.policies, svc.broken = IdentityAllocator(), {}, {}
    registry = CollectorRegistry()
    svc.identity_gauge, svc.policy_gauge, svc.broken_gauge = (Gauge(n, "", registry=registry)
                                                              for n in ("i", "p", "b"))
    svc.writes = Counter("w", "", ["op"], registry=registry)
    svc.delay = Histogram("d", "", ["source"], registry=registry)
    svc.kv_ids = await svc.bus.kv(subjects.BUCKET_IDENTITIES, create=True)
    svc.kv_policies = await svc.bus.kv(subjects.BUCKET_POLICIES, create=True, history=5)
    svc.kv_endpoints = await svc.bus.kv(subjects.BUCKET_POLICY_ENDPOINTS, create=True)
    endpoints = await svc._load()
    svc.enforcer = Enforcer(fake, 1000, "default", endpoints)
    await svc._converge()
    return svc


async def with_web_endpoint(url: str, fake: FakePolicyMap) -> PolicyService:
    svc = await policyd(url, fake)
    labels = identity_labels({"app": "web"}, "x", namespace_labels("x", {}))
    svc.identities.restore(Entry(WEB, labels, {"pod:x/web"}))
    await svc.kv_ids.put(str(WEB), codec.encode(Identity(WEB, labels, ["pod:x/web"]).to_wire()))
    await svc.endpoint_sync(EndpointPolicy(1, WEB))
    return svc


def fail(*_args, **_kwargs):
    raise NatsTimeout


def port_80_allowed(fake: FakePolicyMap) -> bool:
    return any(k.port == 80 and not k.egress for k in fake.entries)


def test_a_failed_kv_write_leaves_the_map_as_it_was(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await with_web_endpoint(nats_url, fake)
        before = dict(fake.entries)
        svc.kv_policies.put = fail
        try:
            with pytest.raises(NatsTimeout):
                await svc.apply_policy(Apply(POLICY))
            return before, fake, svc.policies
        finally:
            await svc.bus.drain()
    before, fake, policies = asyncio.run(body())
    assert fake.entries == before and not port_80_allowed(fake), "enforced a policy KV does not hold"
    assert policies == {}


def test_a_failed_kv_delete_leaves_the_policy_in_force(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await with_web_endpoint(nats_url, fake)
        await svc.apply_policy(Apply(POLICY))
        svc.kv_policies.delete = fail
        try:
            with pytest.raises(NatsTimeout):
                await svc.delete_policy(ObjectRef("web", "x"))
            return fake, svc.policies
        finally:
            await svc.bus.drain()
    fake, policies = asyncio.run(body())
    assert port_80_allowed(fake) and set(policies) == {"CiliumNetworkPolicy/x/web"}


def test_a_crash_between_kv_and_map_converges_at_the_next_start(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await with_web_endpoint(nats_url, fake)
        fake.fail_after = 0                               # "crash" at the first map write
        with pytest.raises(OSError):
            await svc.apply_policy(Apply(POLICY))
        await svc.bus.drain()
        assert not port_80_allowed(fake)
        fake.fail_after = None
        again = await policyd(nats_url, fake)             # the next start plans from KV
        try:
            stored = await again.kv_policies.get(kv_key("CiliumNetworkPolicy/x/web"))
            return fake, again, stored
        finally:
            await again.bus.drain()
    fake, again, stored = asyncio.run(body())
    assert stored.value and port_80_allowed(fake)
    assert again.enforcer.endpoints == {1: Endpoint(1, WEB)}


def test_a_forgotten_endpoint_is_gone_from_the_record_after_a_restart(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await with_web_endpoint(nats_url, fake)
        await svc.endpoint_forget(EndpointPolicy(1))
        await svc.bus.drain()
        again = await policyd(nats_url, fake)
        await again.bus.drain()
        return fake, again
    fake, again = asyncio.run(body())
    assert again.enforcer.endpoints == {} and fake.entries == {}


def test_a_sync_that_cannot_be_recorded_writes_nothing(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await policyd(nats_url, fake)
        svc.kv_endpoints.put = fail
        try:
            with pytest.raises(NatsTimeout):
                await svc.endpoint_sync(EndpointPolicy(1, WEB))
            return fake, svc
        finally:
            await svc.bus.drain()
    fake, svc = asyncio.run(body())
    assert fake.entries == {} and svc.enforcer.endpoints == {}


def test_entries_are_kept_when_the_endpoint_record_has_never_been_written(nats_url):
    """A node upgraded from before policyd kept its record: its pods' entries stay until
    endpointd announces them again; once the record exists, unknown endpoints lose theirs."""
    async def body():
        fake = FakePolicyMap()
        first = await with_web_endpoint(nats_url, fake)
        await first.kv_endpoints.purge("1")                 # as if never written...
        await first.bus.js.purge_stream(f"KV_{subjects.BUCKET_POLICY_ENDPOINTS}")
        await first.bus.drain()
        kept = dict(fake.entries)
        upgraded = await policyd(nats_url, fake)
        after_upgrade = dict(fake.entries)
        await upgraded.endpoint_sync(EndpointPolicy(2, WEB))
        await upgraded.bus.drain()
        again = await policyd(nats_url, fake)              # endpoint 1 was never announced again
        await again.bus.drain()
        return kept, after_upgrade, fake
    kept, after_upgrade, fake = asyncio.run(body())
    assert kept and after_upgrade == kept
    assert {k.endpoint_id for k in fake.entries} == {2}
