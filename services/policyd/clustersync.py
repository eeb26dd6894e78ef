"""policyd in a cluster: identity numbers from the cluster, the other nodes' identities, and
the policies every node shares.

A label set's number comes from services.policyd.clusterids (compare-and-set in KV, the same
on every node). The identities other nodes allocated are read from the numbers bucket every
second; when they change, every endpoint's entries are planned again, so a rule selecting
`app=client` admits a client pod on another node by the number its node's ipcache gives it.
The policies bucket is read on the same beat: what another node applied or deleted (or a
revision that won over ours) is put in force here too.
"""
from __future__ import annotations

import asyncio

from services.policyd.clusterids import ClusterIdentities
from services.runtime.bus import Bus, StateUnreadable
from services.wire import subjects

SYNC_SECONDS = 1.0


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
    while True:
        try:
            remote = await read_remote(service.bus, service.cluster_ids, set(service.identities.by_id))
            if remote != service.remote_ids:
                await service.set_remote_identities(remote)
            await service.adopt_policies(await service.bus.kv_items(service.kv_policies))
        except StateUnreadable as exc:
            service.log.warning("cluster identities unreadable, kept as they were", error=exc.message)
        except Exception:
            service.log.exception("cluster identity sync failed")
        await asyncio.sleep(SYNC_SECONDS)
