"""Identity numbers shared by every node of a cluster, allocated with compare-and-set.

Two keys per identity, each created once and only by a KV create (which fails when the key
exists, however many servers take writes at the same moment):

    <bucket of identities>        "<number>"        -> {"id", "labels"}   the number is taken
    <bucket of identity labels>   "<sha256 of labels>" -> {"id", "labels"}   the labels have a number

A node that wants a number for LABELS reads the labels key; when absent it takes the lowest
number it does not see taken (create "<number>", the next one up on a conflict), then claims
the labels (create the labels key). If another node claimed the labels first, this node gives
its number back (delete "<number>" at the revision it wrote) and uses theirs. So one label set
never has two numbers in force and one number never names two label sets. A node that dies
between the two creates leaves a number taken with no labels pointing at it: a hole in the
numbering, never a conflict.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncio

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.policyd.identity import FIRST_ALLOCATED, MAX_IDENTITY, IdentitiesExhausted, labels_key
from services.runtime.bus import kv_get
from services.wire import codec

MAX_CONFLICTS = 1000          # numbers tried in one allocation before giving up
CATCH_UP_READS = 100          # a key the stream leader has may reach the replica read a bit later
CATCH_UP_PAUSE = 0.05


async def create(kv: KeyValue, key: str, value: bytes) -> int | None:
    """Create KEY; its revision, or None when the key exists. nats-py checks a conflict by
    reading the key back (it may be a delete marker, which create may overwrite); that read
    can reach a replica the write has not reached yet, which says "not found": a conflict
    all the same, since the stream leader refused the create."""
    try:
        return await kv.create(key, value)
    except (KeyWrongLastSequenceError, KeyNotFoundError):
        return None


class LabelCollision(Exception):
    """Two label sets with one SHA-256: never expected; refused rather than merged."""


def labels_digest(labels: dict[str, str]) -> str:
    return hashlib.sha256(labels_key(labels).encode()).hexdigest()


@dataclass
class ClusterIdentities:
    numbers: KeyValue           # "<number>" -> {"id", "labels"}
    labels: KeyValue            # digest -> {"id", "labels"}
    next_hint: int = FIRST_ALLOCATED

    async def lookup(self, labels: dict[str, str]) -> int | None:
        found = await kv_get(self.labels, labels_digest(labels))
        if found is None:
            return None
        if found.get("labels") != labels:
            raise LabelCollision(f"labels {labels_key(labels)} and {labels_key(found.get('labels') or {})} "
                                 "share a digest")
        return int(found["id"])

    async def allocate(self, labels: dict[str, str]) -> tuple[int, bool]:
        """The cluster's number for LABELS; True when this call created it."""
        known = await self.lookup(labels)
        if known is not None:
            return known, False
        number, revision = await self._take_number(labels)
        claim = codec.encode({"id": number, "labels": dict(labels)})
        if await create(self.labels, labels_digest(labels), claim) is not None:
            return number, True
        await self.numbers.delete(str(number), last=revision)     # theirs won: ours goes back
        for _ in range(CATCH_UP_READS):
            theirs = await self.lookup(labels)
            if theirs is not None:
                return theirs, False
            await asyncio.sleep(CATCH_UP_PAUSE)
        raise RuntimeError(f"labels {labels_key(labels)}: claimed by another node, and the claim cannot be read")

    async def _take_number(self, labels: dict[str, str]) -> tuple[int, int]:
        number = self.next_hint
        for _ in range(MAX_CONFLICTS):
            if number > MAX_IDENTITY:
                raise IdentitiesExhausted(f"no free identity between {FIRST_ALLOCATED} and {MAX_IDENTITY}")
            revision = await create(self.numbers, str(number), codec.encode({"id": number, "labels": dict(labels)}))
            if revision is None:
                number += 1
                continue
            self.next_hint = number + 1
            return number, revision
        raise IdentitiesExhausted(f"{MAX_CONFLICTS} numbers from {self.next_hint} were all taken")
