"""In a cluster, policyd reads the shared policies bucket and puts in force what other nodes
changed (policyd.clustersync). A read begun before one of this node's own changes reached
the bucket must not undo that change, not even until the next read: an apply would be
briefly lifted, a delete briefly brought back. A read begun after it is put in force.
Real KV buckets (a real nats-server); the policy map is the dict-backed fake."""
import asyncio

from services.datapath.maps.policy import FakePolicyMap
from services.policyd.service import kv_key
from services.wire.messages import Apply, ObjectRef
from tests.privileged.test_policy_inflight import allowed, nats_url, policy, two_endpoints  # noqa: F401


def test_a_read_older_than_a_local_change_does_not_undo_it(nats_url):
    async def body():
        fake = FakePolicyMap()
        svc = await two_endpoints(nats_url, fake)
        try:
            seen = []
            before_apply = await svc.bus.kv_read(svc.kv_policies)
            await svc.apply_policy(Apply(policy("web", "web", 80)))
            await svc.adopt_policies(*before_apply)
            seen.append(("apply", allowed(fake, 1, 80)))
            before_delete = await svc.bus.kv_read(svc.kv_policies)
            await svc.delete_policy(ObjectRef(name="web", namespace="x", object_kind="CiliumNetworkPolicy"))
            await svc.adopt_policies(*before_delete)
            seen.append(("delete", allowed(fake, 1, 80)))
            # Another node's change, read after it: put in force here.
            await svc.apply_policy(Apply(policy("api", "api", 8080)))
            api = next(key for key, p in svc.policies.items() if p.name == "api")
            await svc.kv_policies.delete(kv_key(api))
            await svc.adopt_policies(*await svc.bus.kv_read(svc.kv_policies))
            seen.append(("remote delete", allowed(fake, 2, 8080)))
            return seen
        finally:
            await svc.bus.drain()
    assert asyncio.run(body()) == [("apply", True), ("delete", False), ("remote delete", False)]
