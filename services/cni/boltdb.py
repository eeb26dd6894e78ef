"""A read-only reader of bbolt files (the format of podman 4's libpod state database).

Only what looking up a nested key needs: the newer of the two meta pages, branch and leaf
pages, and buckets (on their own pages, or inline in their parent's value). Layouts follow
bbolt's page.go: a 16-byte page header (id u64, flags u16, count u16, overflow u32), then
16-byte elements whose key (and, in leaves, value) sit at the element's offset plus pos.
A file that does not parse raises BoltError; the caller treats that as "unknown".
"""
from __future__ import annotations

import struct
import os
from collections.abc import Iterator

MAGIC = 0xED0CDAED
BRANCH, LEAF = 0x01, 0x02
BUCKET_LEAF = 0x01
HEADER = 16
ELEMENT = 16
MAX_DEPTH = 32


class BoltError(ValueError):
    pass


class Bucket:
    def __init__(self, data: bytes, page_size: int, root: int, inline: bytes | None = None) -> None:
        self.data, self.page_size, self.root, self.inline = data, page_size, root, inline

    def _entries(self, buf: bytes, base: int, depth: int) -> Iterator[tuple[int, bytes, bytes]]:
        if depth > MAX_DEPTH or base + HEADER > len(buf):
            raise BoltError("page out of range or tree too deep")
        _id, flags, count, _overflow = struct.unpack_from("<QHHI", buf, base)
        for i in range(count):
            e = base + HEADER + i * ELEMENT
            if flags & LEAF:
                eflags, pos, ksize, vsize = struct.unpack_from("<IIII", buf, e)
                k = e + pos
                yield eflags, bytes(buf[k:k + ksize]), bytes(buf[k + ksize:k + ksize + vsize])
            elif flags & BRANCH:
                _pos, _ksize, child = struct.unpack_from("<IIQ", buf, e)
                yield from self._entries(buf, child * self.page_size, depth + 1)
            else:
                raise BoltError(f"page at {base} is neither a branch nor a leaf (flags {flags:#x})")

    def entries(self) -> Iterator[tuple[int, bytes, bytes]]:
        if self.inline is not None:
            return self._entries(self.inline, 0, 0)
        return self._entries(self.data, self.root * self.page_size, 0)

    def get(self, key: bytes) -> bytes | None:
        for flags, k, v in self.entries():
            if k == key and not flags & BUCKET_LEAF:
                return v
        return None

    def bucket(self, key: bytes) -> "Bucket | None":
        for flags, k, v in self.entries():
            if k == key and flags & BUCKET_LEAF:
                root, _seq = struct.unpack_from("<QQ", v, 0)
                return Bucket(self.data, self.page_size, root, v[16:] if root == 0 else None)
        return None


def open_db(path: str | os.PathLike) -> Bucket:
    """The root bucket of the bbolt file at PATH, as of its newest valid meta page."""
    with open(path, "rb") as file:
        data = file.read()
    best: tuple[int, int, int] | None = None       # (txid, page size, root page)
    for page in (0, 1):
        if page == 1 and best is None:
            break
        size = best[1] if best else 0
        base = page * size + HEADER
        if base + 64 > len(data):
            break
        magic, _version, page_size, _flags = struct.unpack_from("<IIII", data, base)
        root, _seq, _freelist, _pgid, txid = struct.unpack_from("<QQQQQ", data, base + 16)
        if magic == MAGIC and (best is None or txid > best[0]):
            best = (txid, page_size, root)
    if best is None:
        raise BoltError(f"{path} is not a bbolt database")
    return Bucket(data, best[1], best[2])
