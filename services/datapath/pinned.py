"""Typed access to a pinned BPF map through libbcc's syscall wrappers.

Maps are created (and pinned) by compiling their owner's C with bcc; after that any process
reads and writes them through the pin, without compiling anything.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from bcc import libbcc

K = TypeVar("K", bound=ct.Structure)
V = TypeVar("V", bound=ct.Structure)

_lib = libbcc.lib
_lib.bpf_obj_get.argtypes = [ct.c_char_p]
_lib.bpf_obj_get.restype = ct.c_int
BPF_ANY = 0
BPF_NOEXIST = 1


class MapError(OSError):
    pass


class MapFull(MapError):
    """The map has no room for another entry (E2BIG from the kernel)."""


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
        fd = _lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            err = ct.get_errno() or 2
            raise MapError(err, f"cannot open pinned map {path}: {os.strerror(err)}")
        self.fd = fd
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
        if _lib.bpf_update_elem(self.fd, ct.byref(key), ct.byref(value), flags) < 0:
            err = ct.get_errno()
            if err in (errno.E2BIG, errno.ENOSPC):   # hash maps say E2BIG, LPM tries ENOSPC
                raise MapFull(err, f"{self.path.name} is full")
            raise MapError(err, f"update {self.path.name}: {os.strerror(err)}")

    def delete(self, key: K) -> bool:
        """Delete KEY; False when it was not there."""
        if _lib.bpf_delete_elem(self.fd, ct.byref(key)) < 0:
            err = ct.get_errno()
            if err == errno.ENOENT:
                return False
            raise MapError(err, f"delete from {self.path.name}: {os.strerror(err)}")
        return True

    def get(self, key: K) -> V | None:
        if self.percpu:
            raise TypeError("use get_percpu on a per-CPU map")
        value = self.value_type()
        if _lib.bpf_lookup_elem(self.fd, ct.byref(key), ct.byref(value)) < 0:
            return None
        return value

    def get_percpu(self, key: K) -> list[V]:
        raw = self._raw()
        if _lib.bpf_lookup_elem(self.fd, ct.byref(key), ct.byref(raw)) < 0:
            return []
        blob = bytes(raw)
        return [self.value_type.from_buffer_copy(blob[i * self._stride:i * self._stride + ct.sizeof(self.value_type)])
                for i in range(self._ncpu)]

    def keys(self) -> Iterator[K]:
        key = self.key_type()
        nxt = self.key_type()
        if _lib.bpf_get_first_key(self.fd, ct.byref(nxt), ct.sizeof(nxt)) < 0:
            return
        while True:
            yield self.key_type.from_buffer_copy(bytes(nxt))
            ct.memmove(ct.byref(key), ct.byref(nxt), ct.sizeof(key))
            if _lib.bpf_get_next_key(self.fd, ct.byref(key), ct.byref(nxt)) < 0:
                return

    def items(self) -> Iterator[tuple[K, V]]:
        for key in list(self.keys()):
            value = self.get(key)
            if value is not None:
                yield key, value
