"""A real three-server NATS cluster made from capillary node configs (routes and clients over
TLS on an underlay bridge): replicated KV, and identity numbers allocated at the same moment
from different servers never conflict."""
import asyncio
import itertools

import pytest

from services.policyd.clusterids import ClusterIdentities
from services.runtime.bus import kv_get
from services.wire import codec
from tests.support.natscluster import nats_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with nats_cluster(tmp_path_factory.mktemp("natscluster")) as c:
        yield c


async def _wait_kv(bus, name: str, replicas: int):
    for _ in range(600):        # the meta leader is elected after the servers meet
        try:
            return await bus.kv(name, create=True, replicas=replicas)
        except Exception:
            await asyncio.sleep(0.1)
    return await bus.kv(name, create=True, replicas=replicas)


def test_clients_know_every_server(cluster):
    creds = cluster.credentials(0)
    assert creds.url.startswith("tls://") and len(creds.servers) == 3
    assert {s.split("//")[1] for s in creds.servers} == {f"{n.underlay_ip}:4222" for n in cluster.lab.nodes}


def test_a_replicated_bucket_is_read_through_any_server(cluster):
    async def go():
        a, c = await cluster.connect(0), await cluster.connect(2)
        try:
            kv = await _wait_kv(a, "t_replicated", 3)
            assert (await a.js.stream_info("KV_t_replicated")).config.num_replicas == 3
            await kv.put("k", codec.encode({"v": 1}))
            other = await c.kv("t_replicated")
            assert await kv_get(other, "k") == {"v": 1}
        finally:
            await a.close()
            await c.close()
    asyncio.run(go())


async def _allocator(cluster, index: int, bucket: str):
    bus = await cluster.connect(index)
    numbers = await _wait_kv(bus, f"{bucket}_n", 3)
    labels = await _wait_kv(bus, f"{bucket}_l", 3)
    return bus, ClusterIdentities(numbers, labels)


def test_concurrent_allocation_on_two_servers_never_conflicts(cluster):
    """Two allocators on different servers take numbers for overlapping label sets at the same
    moment, over and over: each label set ends with one number, each number with one label set."""
    sets = [{"app": f"a{i}"} for i in range(12)]

    async def go():
        (bus1, one), (bus2, two) = await _allocator(cluster, 0, "t_ids"), await _allocator(cluster, 1, "t_ids")
        try:
            order1, order2 = sets, list(reversed(sets))
            got1, got2 = await asyncio.gather(
                asyncio.gather(*(one.allocate(s) for s in order1)),
                asyncio.gather(*(two.allocate(s) for s in order2)))
            by_labels1 = {s["app"]: n for s, (n, _c) in zip(order1, got1)}
            by_labels2 = {s["app"]: n for s, (n, _c) in zip(order2, got2)}
            assert by_labels1 == by_labels2                       # one number per label set
            assert len(set(by_labels1.values())) == len(sets)     # one label set per number
            created = [c for _n, c in itertools.chain(got1, got2) if c]
            assert len(created) == len(sets)                      # each made exactly once
            for app, number in by_labels1.items():                # the number key names its labels
                assert (await kv_get(one.numbers, str(number)))["labels"] == {"app": app}
        finally:
            await bus1.close()
            await bus2.close()
    asyncio.run(go())
