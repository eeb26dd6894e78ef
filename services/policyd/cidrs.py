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

from services.policyd.identity import CidrLabels, Entry, IdentityAllocator, cidr_label
from services.policyd.model import Policy
from services.runtime.bus import ServiceError
from services.runtime.gil import off_loop, sorted_in_steps
from services.wire import codec, subjects
from services.wire.messages import EXHAUSTED, IPCACHE_BATCH_MAX, IpcacheBatch, IpcacheBatchDone

OWNER = "policies"
SOURCE = "cidr-policy"
SHARDS = 256
SHARD_PREFIX = "cidrs."
KV_WINDOW = 256            # KV writes in flight at once


def cidr_of(entry: Entry) -> str:
    return cidr_label(entry.labels)


def cidr_entries(allocator: IdentityAllocator) -> dict[str, Entry]:
    return {cidr: allocator.by_id[i] for cidr, i in allocator.cidrs.items()}


def resolve(allocator: IdentityAllocator, policies: dict[str, Policy]) -> tuple[list[Entry], list[Entry]]:
    """Give ALLOCATOR one local identity per prefix POLICIES name and release the rest.
    Returns (released, created). Pure: the caller persists and announces."""
    return _resolve_to(allocator, set().union(*(p.cidrs for p in policies.values())))


def resolved(allocator: IdentityAllocator, policies: dict[str, Policy]
             ) -> tuple[IdentityAllocator, list[Entry], list[Entry]]:
    """(allocator, released, created) as resolve() on a copy of ALLOCATOR; ALLOCATOR itself,
    unchanged, when POLICIES name the prefixes it holds already (copying 100,000 identities
    for every small apply took longer than the apply)."""
    wanted = set().union(*(p.cidrs for p in policies.values()))
    if wanted == allocator.cidrs.keys():
        return allocator, [], []
    trial = allocator.copy()
    return (trial, *_resolve_to(trial, wanted))


def _resolve_to(allocator: IdentityAllocator, wanted: set[str]) -> tuple[list[Entry], list[Entry]]:
    have = allocator.cidrs
    released = [allocator.by_id[have[c]] for c in sorted_in_steps(have.keys() - wanted)]
    missing = sorted_in_steps(wanted - have.keys())
    for entry in released:
        allocator.release(entry.id, OWNER)
    return released, allocator.allocate_cidrs(missing, OWNER)


def shard_of(cidr: str) -> str:
    return f"{SHARD_PREFIX}{zlib.crc32(cidr.encode()) % SHARDS:02x}"


def shard_contents(allocator: IdentityAllocator, changed: Iterable[Entry]) -> dict[str, dict[str, int]]:
    """The shards holding a CHANGED prefix, each as ALLOCATOR has it now ({} when emptied)."""
    numbers = {zlib.crc32(cidr_of(e).encode()) % SHARDS for e in changed}
    content: dict[int, dict[str, int]] = {n: {} for n in numbers}
    crc32 = zlib.crc32
    for cidr, identity in allocator.cidrs.items():
        held = content.get(crc32(cidr.encode()) % SHARDS)
        if held is not None:
            held[cidr] = identity
    return {f"{SHARD_PREFIX}{n:02x}": v for n, v in content.items()}


def restore(allocator: IdentityAllocator, key: str, value: dict) -> None:
    """Put the identities of one KV shard back into ALLOCATOR."""
    for cidr, identity in value.items():
        allocator.restore(Entry(int(identity), CidrLabels(cidr), {OWNER}))


async def persist(kv, allocator: IdentityAllocator, changed: Iterable[Entry], legacy: Iterable[str] = ()) -> None:
    """Rewrite the shards holding a CHANGED prefix from ALLOCATOR (an emptied shard is
    deleted), KV_WINDOW writes in flight; then delete LEGACY keys (one identity per key)."""
    changed = list(changed)
    if not changed and not legacy:
        return
    content = await off_loop(shard_contents, allocator, changed) if changed else {}
    shards = sorted(content)
    for start in range(0, len(shards), KV_WINDOW):     # encoded a window at a time
        await asyncio.gather(*(_write_shard(kv, s, content.pop(s)) for s in shards[start:start + KV_WINDOW]))
    legacy = list(legacy)
    for start in range(0, len(legacy), KV_WINDOW):
        await asyncio.gather(*(kv.delete(key) for key in legacy[start:start + KV_WINDOW]))


async def _write_shard(kv, shard: str, content: dict[str, int]) -> None:
    await (kv.put(shard, codec.encode(content)) if content else kv.delete(shard))


def _chunks(cidrs: list[str], identities: list[int], released: list[str]) -> list[IpcacheBatch]:
    out = []
    for start in range(0, len(released), IPCACHE_BATCH_MAX):
        out.append(IpcacheBatch(SOURCE, released=released[start:start + IPCACHE_BATCH_MAX]))
    for start in range(0, len(cidrs), IPCACHE_BATCH_MAX):
        out.append(IpcacheBatch(SOURCE, cidrs[start:start + IPCACHE_BATCH_MAX],
                                identities[start:start + IPCACHE_BATCH_MAX]))
    return out


async def _batches(created: list[Entry], released: list[Entry]) -> list[IpcacheBatch]:
    """The requests that make CREATED join and RELEASED leave the ipcache, built on a worker
    thread when there are many (100,000 prefixes read from their labels hold up the event
    loop for a tenth of a second)."""
    def build() -> list[IpcacheBatch]:
        return _chunks([cidr_of(e) for e in created], [e.id for e in created], [cidr_of(e) for e in released])
    return await off_loop(build) if len(created) + len(released) > 1000 else build()


async def announce(bus, created: list[Entry], released: list[Entry], timeout: float) -> None:
    """RELEASED leave the ipcache, CREATED join it: IPCACHE_BATCH_MAX prefixes a request."""
    for batch in await _batches(created, released):
        await bus.request(subjects.IPCACHE_BATCH, batch, timeout=timeout)


async def check_room(bus, created: list[Entry], timeout: float) -> None:
    """Raise routed's EXHAUSTED error, having changed nothing, when the ipcache could not
    take CREATED. Each chunk says how many entries it would add to the ones there now."""
    added, now, capacity = 0, 0, 0
    for batch in await _batches(created, []):
        done = IpcacheBatchDone.from_wire(await bus.request(
            subjects.IPCACHE_BATCH, IpcacheBatch(SOURCE, batch.cidrs, batch.identities, check=True), timeout=timeout))
        added, now, capacity = added + done.claimed, done.entries, done.capacity
    if now + added > capacity:
        raise ServiceError(EXHAUSTED, f"ipcache map is full: the policy's {len(created)} new CIDR identities need "
                                      f"{now + added} entries, room for {capacity} (maps.ipcache in the node "
                                      "config); nothing was changed")
