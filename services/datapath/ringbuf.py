"""A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) read through its pin and mmap, as libbpf's
ring_buffer does it, without libbpf or bcc in the process.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (ours to write); from page
1 on, read-only, the producer position's page and then the data area, mapped twice in a row
so a record that wraps around reads as one. Each record starts with an 8-byte header: u32
length with the BUSY (still being written) and DISCARD bits, u32 page offset; records are
8-byte aligned.

Wake-ups: the kernel wakes epoll waiters when a record is committed while the consumer
position equals that record's position, i.e. when the consumer has caught up. So the
consumer position is stored before the producer position is read again, and a drain ends
only when no new data appeared after that store.
"""
from __future__ import annotations

import mmap
import os
import select
import struct
from pathlib import Path

from services.datapath import bpfsys

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_POS = struct.Struct("=Q")
_LEN = struct.Struct("=I")


class RingBuffer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = bpfsys.obj_get(str(path))
        try:
            self.size = bpfsys.map_info(self.fd).max_entries
            page = mmap.PAGESIZE
            self._consumer = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = mmap.mmap(self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
            self._data = memoryview(self._producer)[page:]
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for name in ("_epoll", "_data", "_producer", "_consumer"):
            obj = self.__dict__.pop(name, None)
            if obj is not None:
                (obj.release if isinstance(obj, memoryview) else obj.close)()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pending(self) -> int:
        """Bytes between the consumer and the producer."""
        return _POS.unpack_from(self._producer, 0)[0] - _POS.unpack_from(self._consumer, 0)[0]

    def poll(self, timeout: float, limit: int) -> list[bytes]:
        """Up to LIMIT records, waiting up to TIMEOUT seconds for the first one."""
        records = self.drain(limit)
        if records:
            return records
        self._epoll.poll(timeout)
        return self.drain(limit)

    def drain(self, limit: int) -> list[bytes]:
        """Up to LIMIT committed records, oldest first; discarded ones are skipped."""
        out: list[bytes] = []
        data, mask = self._data, self.size - 1
        cons = _POS.unpack_from(self._consumer, 0)[0]
        while len(out) < limit:
            prod = _POS.unpack_from(self._producer, 0)[0]
            if cons >= prod:
                break                       # caught up, and the position is stored
            busy = False
            while cons < prod and len(out) < limit:
                at = cons & mask
                header = _LEN.unpack_from(data, at)[0]
                if header & BUSY:
                    busy = True
                    break
                length = header & ~(BUSY | DISCARD)
                if not header & DISCARD:
                    out.append(bytes(data[at + HEADER:at + HEADER + length]))
                cons += (length + HEADER + 7) & ~7
            _POS.pack_into(self._consumer, 0, cons)
            if busy:
                break                       # its commit finds us at its position: a wake-up
        return out
