"""policyd in a cluster: identity numbers from the cluster, the other nodes' identities, and
the policies every node shares.

A label set's number comes from services.policyd.clusterids (compare-and-set in KV, the same
on every node). The identities other nodes allocated are read from the numbers bucket every
second; when they change, every endpoint's entries are planned again, so a rule selecting
`app=client` admits a client pod on another node by the number its node's ipcache gives it.
The policies bucket is read on the same beat: what another node applied or deleted (or a
revision that won over ours) is put in force here too. A write to either bucket, from any
node, starts the next round at once (Bus.on_kv_write), so a policy published on one node
is in force on the others within one read of the buckets; the one-second beat remains for
whatever a trigger could miss (a reconnect). A read begun before one of this node's own
changes reached the bucket is dropped (PolicyService.adopt_policies): that change's write
triggers the next one.
"""
from __future__ import annotations

import asyncio

from services.policyd.clusterids import ClusterIdentities
from services.runtime.bus import Bus, StateUnreadable
from services.wire import subjects

SYNC_SECONDS = 1.0          # the beat: a full read of both buckets at least this often
RECHECK_SECONDS = (0.01, 0.03, 0.1)     # after a write: reads again after these pauses (sync_loop)


async def open_identities(bus: Bus, replicas: int) -> ClusterIdentities:
    numbers = await bus.kv(subjects.BUCKET_IDENTITY_NUMBERS, create=True, replicas=replicas)
    labels = await bus.kv(subjects.BUCKET_IDENTITY_LABELS, create=True, replicas=replicas)
    return ClusterIdentities(numbers, labels)


async def read_remote(bus: Bus, ids: ClusterIdentities, local: set[int]) -> dict[int, dict[str, str]]:
    """Every number of the cluster not held here -> its labels (raises StateUnreadable)."""
    out = {}
    for key, value in (await bus.kv_items(ids.numbers)).items():
        if key.isdigit() and int(key) not in local and isinstance(value.get("labels"), dict):
            out[int(key)] = value["labels"]
    return out


async def sync_loop(service) -> None:
    """Keep SERVICE.remote_ids equal to the cluster's; replan every endpoint when it moves."""
    written = asyncio.Event()
    for bucket in (subjects.BUCKET_POLICIES, subjects.BUCKET_IDENTITY_NUMBERS):
        await service.bus.on_kv_write(bucket, written.set)
    rechecks: list[float] = []
    while True:
        written.clear()
        await sync_once(service)
        # A write's message can reach this subscription before this node's copy of the
        # stream serves it: after a write, the buckets are read at once and again soon after.
        try:
            await asyncio.wait_for(written.wait(), rechecks.pop(0) if rechecks else SYNC_SECONDS)
            rechecks = list(RECHECK_SECONDS)
        except asyncio.TimeoutError:
            pass


async def sync_once(service) -> None:
    """One read of both buckets, put in force; a read that fails changes nothing."""
    try:
        remote = await read_remote(service.bus, service.cluster_ids, set(service.identities.by_id))
        if remote != service.remote_ids:
            await service.set_remote_identities(remote)
        await service.adopt_policies(*await service.bus.kv_read(service.kv_policies))
    except StateUnreadable as exc:
        service.log.warning("cluster identities unreadable, kept as they were", error=exc.message)
    except Exception:
        service.log.exception("cluster identity sync failed")
