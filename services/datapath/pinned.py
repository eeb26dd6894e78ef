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
        self._batched = True          # until the kernel says it has no batch update for it
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

    # errnos that mean "this map type or kernel has no batch operations": one tight loop then
    NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)       # 524: the kernel's ENOTSUPP

    def update_many(self, pairs: list[tuple[K, V]]) -> None:
        """Write every (key, value) of PAIRS (see update_packed)."""
        self.update_packed(b"".join(bytes(k) for k, _ in pairs), b"".join(bytes(v) for _, v in pairs))

    def update_packed(self, keys: bytes, values: bytes) -> None:
        """Write the entries whose keys and values lie end to end in KEYS and VALUES (the
        bytes of the key and value structs): BPF_MAP_UPDATE_BATCH, BATCH_WRITE at a time,
        where the kernel has it for this map, else one update per entry. Nothing is read,
        and no Python object is made per entry. On an error (MapFull when the map has no
        room) the exception's ``done`` says how many entries, from the first, were written."""
        if self.percpu:
            raise TypeError("update_packed is for maps that are not per-CPU")
        ksize, vsize = ct.sizeof(self.key_type), ct.sizeof(self.value_type)
        count = len(keys) // ksize
        if len(keys) != count * ksize or len(values) != count * vsize:
            raise ValueError(f"{len(keys)} key bytes and {len(values)} value bytes are not whole "
                             f"{ksize}- and {vsize}-byte entries of one count")
        done = 0
        try:
            for start in range(0, count, self.BATCH_WRITE):
                n = min(self.BATCH_WRITE, count - start)
                chunk_keys = keys[start * ksize:(start + n) * ksize]
                chunk_values = values[start * vsize:(start + n) * vsize]
                if not self._batched or not self._update_batch(chunk_keys, chunk_values, n):
                    for i in range(n):
                        self.update(self.key_type.from_buffer_copy(chunk_keys, i * ksize),
                                    self.value_type.from_buffer_copy(chunk_values, i * vsize))
                        done += 1
                else:
                    done += n
        except MapError as exc:
            exc.done = done + getattr(exc, "batch_done", 0)
            raise

    def _update_batch(self, keys: bytes, values: bytes, n: int) -> bool:
        """False (nothing written) when the kernel has no batch update for this map."""
        key_array = (self.key_type * n).from_buffer_copy(keys)
        value_array = (self.value_type * n).from_buffer_copy(values)
        try:
            bpfsys.update_batch(self.fd, key_array, value_array, n)
        except OSError as exc:
            if exc.errno in self.NO_BATCH and exc.done == 0:
                self._batched = False
                return False
            cls = MapFull if exc.errno in (errno.E2BIG, errno.ENOSPC) else MapError
            err = cls(exc.errno, f"batch update {self.path.name}: {exc.strerror}")
            err.batch_done = exc.done
            raise err from None
        return True

    def delete_many(self, keys: list[K]) -> int:
        """Delete every key of KEYS (those not there are skipped); how many were there.
        One loop of deletes: a batch delete stops at the first missing key."""
        return sum(self.delete(key) for key in keys)

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

    def put_zero(self, key: K) -> None:
        """Set KEY's value to zero (on every CPU, for a per-CPU map)."""
        self.update(key, self._raw() if self.percpu else self.value_type())

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

    def get_percpu_words(self, key: K) -> memoryview | None:
        """KEY's per-CPU values as one run of u64 words, CPU after CPU, each CPU's value
        padded to a whole word (words_per_cpu() apart); None when KEY is not there."""
        raw = self._raw()
        if not self._lookup(key, raw):
            return None
        return memoryview(raw).cast("B").cast("Q")

    def words_per_cpu(self) -> int:
        return self._stride // 8

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
    BATCH_WRITE = 4096

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
