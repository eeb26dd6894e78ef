"""Typed access to a pinned BPF map, through bpf(2) directly (services/datapath/bpfsys.py).

Maps are created (and pinned) by compiling their owner's C with bcc; after that any process
reads and writes them through the pin, without compiling anything.
"""
from __future__ import annotations

import collections
import ctypes as ct
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from services.datapath import bpfsys

K = TypeVar("K", bound=ct.Structure)
V = TypeVar("V", bound=ct.Structure)

BPF_ANY = bpfsys.BPF_ANY
BPF_NOEXIST = bpfsys.BPF_NOEXIST


# Writes to every map this process opened, as Cilium's cilium_bpf_map_ops_total counts them:
# (map name, operation, outcome) -> count. Read with map_ops(); the lock makes each count exact
# while service threads and the event loop share maps.
_OPS: collections.Counter = collections.Counter()
_OPS_LOCK = threading.Lock()


def _count(path: Path, operation: str, ok: bool) -> None:
    with _OPS_LOCK:
        _OPS[(path.name, operation, "success" if ok else "fail")] += 1


def map_ops() -> dict[tuple[str, str, str], int]:
    with _OPS_LOCK:
        return dict(_OPS)


class MapError(OSError):
    pass


class MapFull(MapError):
    """The map has no room for another entry (E2BIG from the kernel)."""


def filled(struct: type[ct.Structure], **values: int) -> ct.Structure:
    """STRUCT with VALUES, each checked against its field's width: ctypes would silently
    keep the low bits (endpoint 65537 became endpoint 1), so a value that does not fit is
    a ValueError naming the field."""
    widths = {name: ct.sizeof(tp) * 8 for name, tp, *_ in struct._fields_}
    for name, value in values.items():
        if not 0 <= value < 1 << widths[name]:
            raise ValueError(f"{struct.__name__}.{name}: {value} does not fit in {widths[name]} bits")
    return struct(**values)


def possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class PinnedMap(Generic[K, V]):
    def __init__(self, path: Path, key: type[K], value: type[V], percpu: bool = False) -> None:
        self.path = path
        self.key_type = key
        self.value_type = value
        self.percpu = percpu
        try:
            self.fd = bpfsys.obj_get(str(path))
        except OSError as exc:
            raise MapError(exc.errno, f"cannot open pinned map {path}: {exc.strerror}") from None
        if percpu:
            stride = (ct.sizeof(value) + 7) & ~7
            self._ncpu = possible_cpus()
            self._raw = ct.c_ubyte * (stride * self._ncpu)
            self._stride = stride

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PinnedMap[K, V]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, key: K, value: V, flags: int = BPF_ANY) -> None:
        try:
            bpfsys.update(self.fd, key, value, flags)
            _count(self.path, "update", True)
        except OSError as exc:
            _count(self.path, "update", False)
            if exc.errno in (errno.E2BIG, errno.ENOSPC):   # hash maps say E2BIG, LPM tries ENOSPC
                raise MapFull(exc.errno, f"{self.path.name} is full") from None
            raise MapError(exc.errno, f"update {self.path.name}: {exc.strerror}") from None

    def insert_zeroed(self, key: K) -> bool:
        """Insert KEY with a zero value (on every CPU, for a per-CPU map); False when KEY is
        already there, whose value is left alone."""
        value = self._raw() if self.percpu else self.value_type()
        try:
            bpfsys.update(self.fd, key, value, BPF_NOEXIST)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            _count(self.path, "update", False)
            if exc.errno in (errno.E2BIG, errno.ENOSPC):
                raise MapFull(exc.errno, f"{self.path.name} is full") from None
            raise MapError(exc.errno, f"update {self.path.name}: {exc.strerror}") from None
        _count(self.path, "update", True)
        return True

    def delete(self, key: K) -> bool:
        """Delete KEY; False when it was not there."""
        try:
            deleted = bpfsys.delete(self.fd, key)
        except OSError as exc:
            _count(self.path, "delete", False)
            raise MapError(exc.errno, f"delete from {self.path.name}: {exc.strerror}") from None
        _count(self.path, "delete", True)
        return deleted

    def get(self, key: K) -> V | None:
        if self.percpu:
            raise TypeError("use get_percpu on a per-CPU map")
        value = self.value_type()
        return value if self._lookup(key, value) else None

    def get_percpu(self, key: K) -> list[V]:
        raw = self._raw()
        if not self._lookup(key, raw):
            return []
        blob = bytes(raw)
        return [self.value_type.from_buffer_copy(blob[i * self._stride:i * self._stride + ct.sizeof(self.value_type)])
                for i in range(self._ncpu)]

    def _lookup(self, key, value) -> bool:
        try:
            return bpfsys.lookup(self.fd, key, value)
        except OSError as exc:
            raise MapError(exc.errno, f"lookup in {self.path.name}: {exc.strerror}") from None

    def keys(self) -> Iterator[K]:
        key = self.key_type()
        nxt = self.key_type()
        if not bpfsys.next_key(self.fd, None, nxt):
            return
        while True:
            yield self.key_type.from_buffer_copy(bytes(nxt))
            ct.memmove(ct.byref(key), ct.byref(nxt), ct.sizeof(key))
            if not bpfsys.next_key(self.fd, key, nxt):
                return

    def items(self) -> Iterator[tuple[K, V]]:
        for key in list(self.keys()):
            value = self.get(key)
            if value is not None:
                yield key, value

    BATCH = 1024

    def batches(self) -> Iterator[tuple[ct.Array, ct.Array, int]]:
        """Every entry of a (non-per-CPU) hash map, BATCH at a time, as (keys, values, n):
        a few syscalls instead of two per entry. The arrays are reused for the next batch:
        copy what you keep. Entries may be deleted meanwhile; entries that change may be
        missed or seen once more, as with items()."""
        keys, values = (self.key_type * self.BATCH)(), (self.value_type * self.BATCH)()
        token, next_token = ct.c_uint32(), ct.c_uint32()
        first = True
        while True:
            try:
                n, done = bpfsys.lookup_batch(self.fd, token, next_token, keys, values, self.BATCH, first)
            except OSError as exc:
                raise MapError(exc.errno, f"batch lookup in {self.path.name}: {exc.strerror}") from None
            yield keys, values, n
            if done:
                return
            token.value, first = next_token.value, False
