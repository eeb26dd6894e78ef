"""One policy change put in force without holding up the others (PolicyService's part).

A change is staged (compiled, checked) on a worker thread without policyd's lock, so other
requests go on meanwhile (services.policyd.staging says when a plan staged against older
state still holds). Under the lock, the policy is stored in KV and the change committed in
memory; then, with the lock let go, its CIDR identities are persisted and the policy map
written (services.policyd.inflight: who waits for that write, and in which order); new CIDR
identities join the ipcache last. Removed ones leave it, under the lock, before their
entries go. Order for changes touching the same endpoints: the policy's own lock (its
changes in arrival order), then policyd's lock, then the writes under way to its endpoints.
"""
from __future__ import annotations

import asyncio
import dataclasses

from services.policyd import cidrs
from services.policyd.enforcer import PolicyMapFull
from services.policyd.inflight import Write
from services.policyd.model import Policy
from services.policyd.staging import Staged
from services.runtime.bus import ServiceError
from services.runtime.gil import INLINE_MAX, off_loop_if_large
from services.wire.messages import EXHAUSTED

IPCACHE_TIMEOUT = 60.0      # seconds for one ipcache.batch request (IPCACHE_BATCH_MAX prefixes)
STAGE_ATTEMPTS = 3          # stagings of a policy change outside the lock before one under it


class Changes:
    """PolicyService's policy changes (a mixin: it uses the service's state and lock)."""

    async def _change(self, wanted, changed: list[Policy], store) -> tuple[int, int, int]:
        """Put WANTED() (the policies with this change) in force and STORE() it in KV:
        staged on a worker thread, committed under self._lock if what was committed since
        left its plan valid, else staged again (after STAGE_ATTEMPTS, under the lock, once
        every write under way is done). A staging that compiled endpoints a write was
        changing meanwhile waits for that write and stages again."""
        committed = None
        for _ in range(STAGE_ATTEMPTS):
            version, seen = self._changes.version, self._inflight.snapshot()
            try:
                staged = await off_loop_if_large(_stage_size(changed), self._stage, wanted(), changed)
            except RuntimeError:          # state changed under the worker's feet: stage again
                continue
            busy = self._inflight.overlapping(seen, staged.endpoints)
            if busy:
                await asyncio.gather(*(w.done.wait() for w in busy))
                continue
            await cidrs.check_room(self.bus, staged.created, IPCACHE_TIMEOUT)
            async with self._lock:
                if self._changes.untouched_since(version, staged.endpoints):
                    committed = await self._commit_staged(self._rebased(staged, wanted()), store)
                    break
        if committed is None:
            async with self._lock:
                await self._inflight.settled()
                staged = await off_loop_if_large(_stage_size(changed), self._stage, wanted(), changed)
                await cidrs.check_room(self.bus, staged.created, IPCACHE_TIMEOUT)
                committed = await self._commit_staged(staged, store)
        revision, tail = committed
        written, removed = await tail
        await cidrs.announce(self.bus, staged.created, [], IPCACHE_TIMEOUT)
        return revision, written, removed

    def _rebased(self, staged: Staged, policies: dict[str, Policy]) -> Staged:
        """STAGED with POLICIES (those in force now, with this change) and the map's entry
        count now: changes committed since it was staged touched none of its endpoints."""
        now = self.enforcer.committed
        total = staged.total - staged.base + now
        try:
            self.enforcer.check_capacity(total)
        except PolicyMapFull as exc:
            raise ServiceError(EXHAUSTED, str(exc)) from None
        return dataclasses.replace(staged, policies=policies, total=total, base=now)

    async def _commit_staged(self, staged: Staged, store):
        revision = await store()
        self.policies_written = max(self.policies_written, revision)
        return revision, await self._commit(staged)

    async def _commit(self, staged: Staged):
        """Put a staged change in force in memory (under self._lock; the policy itself is in
        KV already) and return its tail: the task that persists its CIDR identities and
        writes the map, for the caller to await once the lock is let go. Announcing its new
        CIDR identities is the caller's step after that."""
        await cidrs.announce(self.bus, [], staged.released, IPCACHE_TIMEOUT)
        identities = bool(staged.released or staged.created or self._legacy_cidr_keys)
        if staged.released or staged.created:
            self.identities = staged.identities
            if staged.universe[0] is self.remote_ids:     # built from these: a second's work kept
                self._universe_of = (self.identities, self.identities.generation, *staged.universe)
        # (else it is self.identities: keeping the allocator keeps the Universe built from it)
        self.policies = staged.policies
        # Another staged change can still commit after this one when it compiled none of
        # these endpoints, unless identities came or went.
        self._changes.bump(None if staged.released or staged.created else staged.endpoints)
        write = self._inflight.start(staged.endpoints, staged.total - staged.base)
        self.enforcer.reserved = self._inflight.reserved
        legacy, self._legacy_cidr_keys = self._legacy_cidr_keys, []
        if identities:
            await self._inflight.persisting.acquire()      # persisted in commit order
        # A task from now: its write is finished, and the persisting lock let go, even should
        # the request that made it be cancelled.
        return asyncio.ensure_future(self._tail(staged, write, legacy, identities))

    async def _tail(self, staged: Staged, write: Write, legacy: list[str], identities: bool) -> tuple[int, int]:
        try:
            if identities:
                try:
                    await cidrs.persist(self.kv_ids, staged.identities, staged.released + staged.created, legacy)
                finally:
                    self._inflight.persisting.release()
            return await off_loop_if_large(_diff_size(staged.diffs), self._write_diffs, staged.diffs)
        finally:
            staged.diffs.clear()          # its entries are in the map and its mirror: not kept twice
            self._inflight.finish(write)
            self.enforcer.reserved = self._inflight.reserved

    def _write_diffs(self, diffs) -> tuple[int, int]:
        written, removed = self.enforcer.apply(diffs)
        self.writes.labels("write").inc(written)
        self.writes.labels("delete").inc(removed)
        return written, removed


def _stage_size(changed: list[Policy]) -> int:
    """The size of staging CHANGED (a policy's new and old versions): their weight, unless
    their CIDR prefixes differ. Identities made or released can recompile other policies'
    endpoints, however many peers those hold (staging.widen): taken as large."""
    weight = sum(p.weight for p in changed)
    if weight >= INLINE_MAX or len({p.cidrs for p in changed}) > 1 or (len(changed) == 1 and changed[0].cidrs):
        return INLINE_MAX           # (a large policy's prefixes are not worked out here, on the loop)
    return weight


def _diff_size(diffs) -> int:
    return sum(len(d.allows) + len(d.denies) + len(d.removed) for d in diffs.values())
