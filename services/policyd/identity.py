"""Security identities: one number per distinct label set. Pure logic, no I/O.

Numbering follows Cilium: reserved identities below 256 (host=1, world=2, ...), identities
for label sets from 256 up. An identity lives while something holds it (owners); the
service persists every change in KV so numbers survive restarts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RESERVED = {
    1: "reserved:host",
    2: "reserved:world",
    3: "reserved:unmanaged",
    4: "reserved:health",
    5: "reserved:init",
    6: "reserved:remote-node",
    7: "reserved:kube-apiserver",
    8: "reserved:ingress",
}
FIRST_ALLOCATED = 256
MAX_IDENTITY = 0xFFFF
FIRST_LOCAL = 1 << 24          # node-local identities (CIDRs), as Cilium's local scope
MAX_LOCAL = FIRST_LOCAL + 0xFFFFFF    # 16M, as Cilium's local scope: a CIDR allow-list of 100k fits


class IdentitiesExhausted(Exception):
    pass


def labels_key(labels: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(slots=True)
class Entry:
    id: int
    labels: dict[str, str]
    owners: set[str] = field(default_factory=set)


class IdentityAllocator:
    def __init__(self) -> None:
        self.by_id: dict[int, Entry] = {}
        self._by_labels: dict[str, int] = {}
        # Where each range's search for a free number starts: every number below it is taken
        # (release() moves it back). Scanning from the range's start each time made
        # allocating N CIDR identities cost N^2 / 2 lookups.
        self._free_from = {False: FIRST_ALLOCATED, True: FIRST_LOCAL}
        self.generation = 0            # goes up with every identity added or removed

    def copy(self) -> IdentityAllocator:
        """An allocator that changes independently of this one: allocate() and release()
        on it leave this one as it is. Labels are shared (nothing changes them after
        allocate() made its own copy); only the owner sets, which both change, are copied.
        The cheap form of copy.deepcopy for a trial run."""
        out = IdentityAllocator()
        out.by_id = {i: Entry(e.id, e.labels, set(e.owners)) for i, e in self.by_id.items()}
        out._by_labels = dict(self._by_labels)
        out._free_from = dict(self._free_from)
        return out

    def keys(self) -> set[str]:
        """The label sets held, as labels_key() spells them."""
        return set(self._by_labels)

    def restore(self, entry: Entry) -> None:
        self.generation += 1
        self.by_id[entry.id] = entry
        self._by_labels[labels_key(entry.labels)] = entry.id

    def allocate(self, labels: dict[str, str], owner: str, local: bool = False,
                 number: int | None = None) -> tuple[Entry, bool]:
        """The identity for LABELS, held by OWNER; True when it was newly created.
        local: number it from the node-local range (CIDR identities). number: the one the
        cluster gave LABELS (services.policyd.clusterids)."""
        existing = self._by_labels.get(labels_key(labels))
        if existing is not None:
            entry = self.by_id[existing]
            entry.owners.add(owner)
            return entry, False
        if number is not None:
            if number in self.by_id:
                raise ValueError(f"identity {number} names {labels_key(self.by_id[number].labels)} here, "
                                 f"and the cluster gave it to {labels_key(labels)}")
            entry = Entry(number, dict(labels), {owner})
            self.restore(entry)
            return entry, True
        first, last = (FIRST_LOCAL, MAX_LOCAL) if local else (FIRST_ALLOCATED, MAX_IDENTITY)
        for candidate in range(max(first, self._free_from[local]), last + 1):
            if candidate not in self.by_id:
                entry = Entry(candidate, dict(labels), {owner})
                self.restore(entry)
                self._free_from[local] = candidate + 1
                return entry, True
        raise IdentitiesExhausted(f"no free identity between {first} and {last}")

    def release(self, identity: int, owner: str) -> Entry | None:
        """Drop OWNER's hold; returns the entry when it has no holder left (and is gone)."""
        entry = self.by_id.get(identity)
        if entry is None:
            return None
        entry.owners.discard(owner)
        if entry.owners:
            return None
        self.generation += 1
        del self.by_id[identity]
        del self._by_labels[labels_key(entry.labels)]
        local = identity >= FIRST_LOCAL
        self._free_from[local] = min(self._free_from[local], identity)
        return entry
