"""CIDR identities in bulk: which prefixes the policies need, their KV record and their
ipcache claims, each a few bounded operations however many prefixes a policy names.

One identity per prefix, shared by every policy that names it (owner "policies"): it lives
while at least one policy in force names the prefix, so deleting one of two policies that
name it keeps it, and deleting the last removes it with its ipcache entry.

KV record: the identities bucket holds them in SHARDS keys ``cidrs.<xx>`` (a map prefix ->
identity each), rewritten whole when one of their prefixes changes. One key per identity
made a 100,000-prefix policy 100,000 KV writes, and more keys than a bucket listing shows.
"""
from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable

from services.policyd import prefix
from services.policyd.compiler import CIDR_LABEL
from services.policyd.identity import Entry, IdentityAllocator
from services.policyd.model import Policy
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import EXHAUSTED, IPCACHE_BATCH_MAX, IpcacheBatch, IpcacheBatchDone

OWNER = "policies"
SOURCE = "cidr-policy"
SHARDS = 256
SHARD_PREFIX = "cidrs."
KV_WINDOW = 256            # KV writes in flight at once


def cidrs_of(policy: Policy) -> set[str]:
    out = set()
    for rule in policy.rules:
        for peer in rule.peers:
            if peer.cidr is not None:
                out.add(_canonical(peer.cidr))
                out.update(_canonical(e) for e in peer.except_)
    return out


def _canonical(cidr: str) -> str:
    """The prefix's one spelling (the parser gives it; a stand-in may not)."""
    plain = prefix.parse(cidr)
    return cidr if plain is not None and not prefix.host_bits(*plain) else str(prefix.network(cidr))


def cidr_of(entry: Entry) -> str:
    return next(lbl[len(CIDR_LABEL):] for lbl in entry.labels if lbl.startswith(CIDR_LABEL))


def cidr_entries(allocator: IdentityAllocator) -> dict[str, Entry]:
    return {lbl[len(CIDR_LABEL):]: e for e in allocator.by_id.values()
            for lbl in e.labels if lbl.startswith(CIDR_LABEL)}


def resolve(allocator: IdentityAllocator, policies: dict[str, Policy]) -> tuple[list[Entry], list[Entry]]:
    """Give ALLOCATOR one local identity per prefix POLICIES name and release the rest.
    Returns (released, created). Pure: the caller persists and announces."""
    wanted = set().union(*(cidrs_of(p) for p in policies.values())) if policies else set()
    have = cidr_entries(allocator)
    released = [have[c] for c in sorted(set(have) - wanted)]
    for entry in released:
        allocator.release(entry.id, OWNER)
    created = []
    for cidr in sorted(wanted - set(have)):
        entry, _ = allocator.allocate({f"{CIDR_LABEL}{cidr}": ""}, OWNER, local=True)
        created.append(entry)
    return released, created


def shard_of(cidr: str) -> str:
    return f"{SHARD_PREFIX}{zlib.crc32(cidr.encode()) % SHARDS:02x}"


def restore(allocator: IdentityAllocator, key: str, value: dict) -> None:
    """Put the identities of one KV shard back into ALLOCATOR."""
    for cidr, identity in value.items():
        allocator.restore(Entry(int(identity), {f"{CIDR_LABEL}{cidr}": ""}, {OWNER}))


async def persist(kv, allocator: IdentityAllocator, changed: Iterable[Entry], legacy: Iterable[str] = ()) -> None:
    """Rewrite the shards holding a CHANGED prefix from ALLOCATOR (an emptied shard is
    deleted), KV_WINDOW writes in flight; then delete LEGACY keys (one identity per key)."""
    shards = {shard_of(cidr_of(e)) for e in changed}
    if not shards and not legacy:
        return
    content: dict[str, dict[str, int]] = {s: {} for s in shards}
    for cidr, entry in cidr_entries(allocator).items():
        shard = shard_of(cidr)
        if shard in content:
            content[shard][cidr] = entry.id
    writes = [kv.put(s, codec.encode(v)) if v else kv.delete(s) for s, v in sorted(content.items())]
    writes += [kv.delete(key) for key in legacy]
    for start in range(0, len(writes), KV_WINDOW):
        await asyncio.gather(*writes[start:start + KV_WINDOW])


def _chunks(cidrs: list[str], identities: list[int], released: list[str]) -> list[IpcacheBatch]:
    out = []
    for start in range(0, len(released), IPCACHE_BATCH_MAX):
        out.append(IpcacheBatch(SOURCE, released=released[start:start + IPCACHE_BATCH_MAX]))
    for start in range(0, len(cidrs), IPCACHE_BATCH_MAX):
        out.append(IpcacheBatch(SOURCE, cidrs[start:start + IPCACHE_BATCH_MAX],
                                identities[start:start + IPCACHE_BATCH_MAX]))
    return out


async def announce(bus, created: list[Entry], released: list[Entry], timeout: float) -> None:
    """RELEASED leave the ipcache, CREATED join it: IPCACHE_BATCH_MAX prefixes a request."""
    cidrs = [cidr_of(e) for e in created]
    for batch in _chunks(cidrs, [e.id for e in created], [cidr_of(e) for e in released]):
        await bus.request(subjects.IPCACHE_BATCH, batch, timeout=timeout)


async def check_room(bus, created: list[Entry], timeout: float) -> None:
    """Raise routed's EXHAUSTED error, having changed nothing, when the ipcache could not
    take CREATED. Each chunk says how many entries it would add to the ones there now."""
    added, now, capacity = 0, 0, 0
    cidrs = [cidr_of(e) for e in created]
    for batch in _chunks(cidrs, [e.id for e in created], []):
        done = IpcacheBatchDone.from_wire(await bus.request(
            subjects.IPCACHE_BATCH, IpcacheBatch(SOURCE, batch.cidrs, batch.identities, check=True), timeout=timeout))
        added, now, capacity = added + done.claimed, done.entries, done.capacity
    if now + added > capacity:
        raise ServiceError(EXHAUSTED, f"ipcache map is full: the policy's {len(created)} new CIDR identities need "
                                      f"{now + added} entries, room for {capacity} (maps.ipcache in the node "
                                      "config); nothing was changed")
