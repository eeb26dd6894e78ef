"""Security identities: one number per distinct label set. Pure logic, no I/O.

Numbering follows Cilium: reserved identities below 256 (host=1, world=2, ...), identities
for label sets from 256 up. An identity lives while something holds it (owners); the
service persists every change in KV so numbers survive restarts.

Entries are never changed in place: a change of owners puts a new Entry in by_id. So a copy
of an allocator shares every Entry with the original (a trial run over 100,000 CIDR
identities copies three dicts of references, not 100,000 entries), and owner sets, which
are frozen, are shared by every entry with the same holders.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from services.wire.messages import Identity

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
CIDR_LABEL = "cidr:"           # the label of a CIDR identity: cidr:<prefix>


class IdentitiesExhausted(Exception):
    pass


def labels_key(labels: dict[str, str]) -> str:
    if len(labels) == 1:                 # a CIDR identity's: 100,000 of them in one policy
        for k, v in labels.items():
            return f"{k}={v}"
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


class CidrLabels(Mapping):
    """The labels of a CIDR identity, {"cidr:<prefix>": ""}, as one slot holding the prefix:
    a read-only mapping like the dict it stands for, at a fifth of its size (a policy of
    100,000 CIDR peers holds 100,000 of them)."""

    __slots__ = ("cidr",)

    def __init__(self, cidr: str) -> None:
        self.cidr = cidr

    def __getitem__(self, key: str) -> str:
        if key == CIDR_LABEL + self.cidr:
            return ""
        raise KeyError(key)

    def get(self, key: str, default=None):
        return "" if key == CIDR_LABEL + self.cidr else default

    def __contains__(self, key: object) -> bool:
        return key == CIDR_LABEL + self.cidr

    def __iter__(self) -> Iterator[str]:
        yield CIDR_LABEL + self.cidr

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return repr(dict(self))


def cidr_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """LABELS as the allocator keeps them: a CidrLabels for a CIDR identity's, else a dict
    of its own (nothing the caller does to LABELS later changes the identity's)."""
    if len(labels) == 1:
        for key, value in labels.items():
            if key.startswith(CIDR_LABEL) and value == "":
                return labels if type(labels) is CidrLabels else CidrLabels(key[len(CIDR_LABEL):])
    return dict(labels)


def cidr_label(labels: Mapping[str, str]) -> str | None:
    """The prefix a CIDR identity's LABELS name, or None."""
    if type(labels) is CidrLabels:
        return labels.cidr
    return next((k[len(CIDR_LABEL):] for k in labels if k.startswith(CIDR_LABEL)), None)


_SHARED_OWNERS: dict[frozenset[str], frozenset[str]] = {}


def _owners(owners) -> frozenset[str]:
    """OWNERS as the one frozenset object every entry with these holders shares."""
    frozen = frozenset(owners)
    return _SHARED_OWNERS.setdefault(frozen, frozen) if len(frozen) <= 2 else frozen


@dataclass(slots=True)
class Entry:
    id: int
    labels: Mapping[str, str]          # a dict, or CidrLabels for a CIDR identity
    owners: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.owners = _owners(self.owners)


class IdentityAllocator:
    def __init__(self) -> None:
        self.by_id: dict[int, Entry] = {}
        self._by_labels: dict[str, int] = {}
        self.cidrs: dict[str, int] = {}        # prefix -> its CIDR identity
        # Where each range's search for a free number starts: every number below it is taken
        # (release() moves it back). Scanning from the range's start each time made
        # allocating N CIDR identities cost N^2 / 2 lookups.
        self._free_from = {False: FIRST_ALLOCATED, True: FIRST_LOCAL}
        self.generation = 0            # goes up with every identity added or removed

    def copy(self) -> IdentityAllocator:
        """An allocator that changes independently of this one: allocate() and release()
        on it leave this one as it is. Entries are shared (neither changes one in place).
        The cheap form of copy.deepcopy for a trial run."""
        out = IdentityAllocator()
        out.by_id = dict(self.by_id)
        out._by_labels = dict(self._by_labels)
        out.cidrs = dict(self.cidrs)
        out._free_from = dict(self._free_from)
        return out

    def keys(self) -> set[str]:
        """The label sets held, as labels_key() spells them."""
        return set(self._by_labels)

    def restore(self, entry: Entry, key: str | None = None) -> None:
        """Put ENTRY in (KEY: its labels_key, when the caller has it already)."""
        self.generation += 1
        self.by_id[entry.id] = entry
        self._by_labels[key or labels_key(entry.labels)] = entry.id
        cidr = cidr_label(entry.labels)
        if cidr is not None:
            self.cidrs[cidr] = entry.id

    def allocate(self, labels: dict[str, str], owner: str, local: bool = False,
                 number: int | None = None) -> tuple[Entry, bool]:
        """The identity for LABELS, held by OWNER; True when it was newly created.
        local: number it from the node-local range (CIDR identities). number: the one the
        cluster gave LABELS (services.policyd.clusterids)."""
        key = labels_key(labels)
        existing = self._by_labels.get(key)
        if existing is not None:
            entry = self.by_id[existing]
            if owner not in entry.owners:
                entry = self.by_id[existing] = Entry(entry.id, entry.labels, entry.owners | {owner})
            return entry, False
        if number is not None:
            if number in self.by_id:
                raise ValueError(f"identity {number} names {labels_key(self.by_id[number].labels)} here, "
                                 f"and the cluster gave it to {labels_key(labels)}")
            entry = Entry(number, cidr_labels(labels), {owner})
            self.restore(entry, key)
            return entry, True
        first, last = (FIRST_LOCAL, MAX_LOCAL) if local else (FIRST_ALLOCATED, MAX_IDENTITY)
        for candidate in range(max(first, self._free_from[local]), last + 1):
            if candidate not in self.by_id:
                entry = Entry(candidate, cidr_labels(labels), {owner})
                self.restore(entry, key)
                self._free_from[local] = candidate + 1
                return entry, True
        raise IdentitiesExhausted(f"no free identity between {first} and {last}")

    def allocate_cidrs(self, cidrs: list[str], owner: str) -> list[Entry]:
        """New node-local identities for CIDRS, none of which has one yet, held by OWNER: as
        allocate() for each, in one loop (100,000 prefixes of a policy)."""
        owners = _owners({owner})
        by_id, by_labels, index = self.by_id, self._by_labels, self.cidrs
        candidate = max(FIRST_LOCAL, self._free_from[True])
        out = []
        for cidr in cidrs:
            while candidate in by_id:
                candidate += 1
            if candidate > MAX_LOCAL:
                raise IdentitiesExhausted(f"no free identity between {FIRST_LOCAL} and {MAX_LOCAL}")
            entry = Entry(candidate, CidrLabels(cidr), owners)
            by_id[candidate] = entry
            by_labels[f"{CIDR_LABEL}{cidr}="] = candidate          # labels_key of its labels
            index[cidr] = candidate
            out.append(entry)
            candidate += 1
        self.generation += 1
        self._free_from[True] = candidate
        return out

    def release(self, identity: int, owner: str) -> Entry | None:
        """Drop OWNER's hold; returns the entry when it has no holder left (and is gone)."""
        entry = self.by_id.get(identity)
        if entry is None:
            return None
        owners = entry.owners - {owner}
        if owners:
            if owners != entry.owners:
                self.by_id[identity] = Entry(entry.id, entry.labels, owners)
            return None
        self.generation += 1
        del self.by_id[identity]
        del self._by_labels[labels_key(entry.labels)]
        cidr = cidr_label(entry.labels)
        if cidr is not None and self.cidrs.get(cidr) == identity:
            del self.cidrs[cidr]
        local = identity >= FIRST_LOCAL
        self._free_from[local] = min(self._free_from[local], identity)
        return entry


def listing(local: Iterable[Entry], remote: Mapping[int, Mapping[str, str]]) -> list[Identity]:
    """identity.list: the reserved identities, this node's (with their owners) and, in a
    cluster, the other nodes' (owned there), by number. Identities are cluster-wide: flowd
    labels a flow from another node's pod with this list, so it holds the other nodes' too."""
    reserved = [Identity(i, {name: ""}) for i, name in RESERVED.items()]
    mine = {e.id: Identity(e.id, dict(e.labels), sorted(e.owners)) for e in local}
    others = {i: Identity(i, dict(labels), remote=True) for i, labels in remote.items() if i not in mine}
    return reserved + [ident for _, ident in sorted({**others, **mine}.items())]
