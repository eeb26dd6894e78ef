"""policyd: security identities (and, with the policy issue, policies -> policy maps)."""
from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from services.policyd.identity import RESERVED, Entry, IdentitiesExhausted, IdentityAllocator
from services.runtime.app import Service
from services.runtime.bus import ServiceError, kv_items
from services.wire import codec, subjects
from services.wire.messages import (EXHAUSTED, INVALID, Identity, IdentityAllocate,
                                    IdentityRelease, ListRequest)


def _wire(entry: Entry) -> Identity:
    return Identity(entry.id, dict(entry.labels), sorted(entry.owners))


class PolicyService(Service):
    NAME = "policyd"

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self.identities = IdentityAllocator()
        self.identity_gauge = Gauge("capillary_identities", "Allocated security identities",
                                    registry=self.registry)
        self.kv_ids = await self.bus.kv(subjects.BUCKET_IDENTITIES, create=True)
        for raw in (await kv_items(self.kv_ids)).values():
            ident = Identity.from_wire(raw)
            self.identities.restore(Entry(ident.id, ident.labels, set(ident.owners)))
        self.identity_gauge.set(len(self.identities.by_id))
        await self.bus.serve(subjects.IDENTITY_ALLOCATE, IdentityAllocate, self.allocate)
        await self.bus.serve(subjects.IDENTITY_RELEASE, IdentityRelease, self.release)
        await self.bus.serve(subjects.IDENTITY_LIST, ListRequest, self.list)

    async def counters(self) -> dict[str, int]:
        return {"identities": len(self.identities.by_id)}

    async def allocate(self, req: IdentityAllocate) -> Identity:
        if not req.labels:
            raise ServiceError(INVALID, "labels: an identity needs at least one label")
        async with self._lock:
            try:
                entry, _created = self.identities.allocate(req.labels, req.owner)
            except IdentitiesExhausted as exc:
                raise ServiceError(EXHAUSTED, str(exc)) from None
            await self.kv_ids.put(str(entry.id), codec.encode(_wire(entry).to_wire()))
            self.identity_gauge.set(len(self.identities.by_id))
        return _wire(entry)

    async def release(self, req: IdentityRelease) -> dict:
        async with self._lock:
            gone = self.identities.release(req.identity, req.owner)
            if gone is not None:
                await self.kv_ids.delete(str(req.identity))
            elif req.identity in self.identities.by_id:
                entry = self.identities.by_id[req.identity]
                await self.kv_ids.put(str(entry.id), codec.encode(_wire(entry).to_wire()))
            self.identity_gauge.set(len(self.identities.by_id))
        return {"released": gone is not None}

    async def list(self, _req: ListRequest) -> list[Identity]:
        reserved = [Identity(i, {name: ""}) for i, name in RESERVED.items()]
        return reserved + [_wire(e) for _, e in sorted(self.identities.by_id.items())]
