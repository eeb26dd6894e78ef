"""A policy change's map write runs after policyd's lock is let go: a change to other
endpoints commits meanwhile, one to the same endpoints waits for it, and both end in force.
Real KV buckets (a real nats-server); the policy map is the dict-backed fake, whose writes
to one endpoint are held until the test lets them go."""
import asyncio
import contextlib
import threading

import pytest

from services.datapath.maps.policy import FakePolicyMap
from services.runtime import gil
from services.policyd.identity import Entry
from services.wire import codec
from services.wire.labels import identity_labels, namespace_labels
from services.wire.messages import Apply, EndpointPolicy, Identity
from tests.privileged.test_policy_kv_order import policyd
from tests.support.jetstream import jetstream_server

WEB, API = 256, 257
WAIT = 120.0          # seconds: a deadline for a condition, not a measured time


def policy(name: str, app: str, port: int) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                     "ingress": [{"toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]}}


class HeldMap(FakePolicyMap):
    """Once ``armed``, writes of entries of endpoint HELD wait until ``release`` is set."""

    def __init__(self, held: int) -> None:
        super().__init__()
        self.held, self.entered, self.release = held, threading.Event(), threading.Event()
        self.armed = False

    def write_many(self, entries, present) -> None:
        if self.armed and any(key.endpoint_id == self.held for key, _ in entries):
            self.entered.set()
            if not self.release.wait(WAIT):
                raise OSError("the test never let the write go")
        super().write_many(entries, present)


@pytest.fixture(autouse=True)
def every_write_off_the_loop(monkeypatch):
    """Every change's work on a worker thread, as a large change's is: a small one's is done
    on the event loop, where a write held by the test would hold up the test itself."""
    monkeypatch.setattr(gil, "INLINE_MAX", 0)


@pytest.fixture
def nats_url(tmp_path):
    with jetstream_server(tmp_path) as url:
        yield url


async def two_endpoints(url: str, fake: FakePolicyMap):
    svc = await policyd(url, fake)
    for endpoint_id, identity, app in ((1, WEB, "web"), (2, API, "api")):
        labels = identity_labels({"app": app}, "x", namespace_labels("x", {}))
        svc.identities.restore(Entry(identity, labels, {f"pod:x/{app}"}))
        await svc.kv_ids.put(str(identity), codec.encode(Identity(identity, labels, [f"pod:x/{app}"]).to_wire()))
        await svc.endpoint_sync(EndpointPolicy(endpoint_id, identity))
    return svc


def allowed(fake: FakePolicyMap, endpoint_id: int, port: int) -> bool:
    return any(k.endpoint_id == endpoint_id and k.port == port and not k.egress for k in fake.entries)


@contextlib.asynccontextmanager
async def web_write_held(url: str):
    """policyd with two endpoints, its write of a policy for web (port 80) held partway:
    (the service, its map, the task of that apply). Every write is let go at the end."""
    fake = HeldMap(held=1)
    svc = await two_endpoints(url, fake)
    fake.armed = True
    try:
        web = asyncio.ensure_future(svc.apply_policy(Apply(policy("web", "web", 80))))
        assert await asyncio.to_thread(fake.entered.wait, WAIT), "the web write never began"
        yield svc, fake, web
    finally:
        fake.release.set()
        await svc.bus.drain()


def test_a_change_to_other_endpoints_commits_while_a_write_is_under_way(nats_url):
    async def body():
        async with web_write_held(nats_url) as (svc, fake, web):
            api = asyncio.ensure_future(svc.apply_policy(Apply(policy("api", "api", 8080))))
            done, _ = await asyncio.wait({web, api}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
            during = (api in done, web in done, allowed(fake, 2, 8080), allowed(fake, 1, 80))
            fake.release.set()
            await asyncio.gather(web, api)
            return during, fake
    during, fake = asyncio.run(body())
    assert during == (True, False, True, False), "(api done, web done, api's entry, web's entry) while web's write was held"
    assert allowed(fake, 1, 80) and allowed(fake, 2, 8080)


def test_a_change_to_the_same_endpoints_waits_for_the_write_and_both_end_in_force(nats_url):
    async def body():
        async with web_write_held(nats_url) as (svc, fake, first):
            second = asyncio.ensure_future(svc.apply_policy(Apply(policy("web-tls", "web", 443))))
            sync = asyncio.ensure_future(svc.endpoint_sync(EndpointPolicy(1, WEB)))
            await asyncio.sleep(0.5)            # time for either to go wrong; nothing is timed
            during = second.done() or sync.done()
            fake.release.set()
            await asyncio.gather(first, second, sync)
            diffs, _ = svc.enforcer.plan(list(svc.policies.values()), svc._universe())
            mirror = {k for entries in svc.enforcer.state.values() for k in entries}
            return during, fake, diffs, mirror
    during, fake, diffs, mirror = asyncio.run(body())
    assert not during, "a change to the held endpoint finished before its write was done"
    assert allowed(fake, 1, 80) and allowed(fake, 1, 443)
    assert diffs == {} and mirror == set(fake.entries), "the map is not what the policies in force compile to"
