"""services/datapath/ringbuf.py against the kernel: a bcc program writes numbered records
into a one-page ring (so they wrap around many times), some of them discarded; the reader,
which knows nothing of bcc, must see every committed record once, in order."""
from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from services.datapath.ringbuf import RingBuffer

DISCARD_EVERY = 7
SOURCE = Path(__file__).with_name("ringbuf_writer.c")


SO_ATTACH_BPF = 50
_writer: socket.socket | None = None          # the filtered socket; datagrams to it make records
_sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@pytest.fixture
def ring_pin():
    global _writer
    from bcc import BPF, libbcc
    bpf = BPF(src_file=str(SOURCE).encode(), cflags=[f"-DDISCARD_EVERY={DISCARD_EVERY}"])
    pin = Path(f"/sys/fs/bpf/capillary-ringbuf-test-{os.getpid()}")
    assert libbcc.lib.bpf_obj_pin(bpf[b"test_ring"].map_fd, str(pin).encode()) == 0, "cannot pin the ring"
    _writer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _writer.bind(("127.0.0.1", 0))
        _writer.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, bpf.load_func(b"writer", BPF.SOCKET_FILTER).fd)
        yield pin
    finally:
        _writer.close()
        pin.unlink()
        bpf.cleanup()


def write(count: int) -> None:
    for _ in range(count):
        _sender.sendto(b"x", _writer.getsockname())


def seqs(records: list[bytes]) -> list[int]:
    return [struct.unpack_from("=I", r)[0] for r in records]


def test_every_committed_record_once_in_order_across_wraparounds(ring_pin):
    ring = RingBuffer(ring_pin)
    try:
        assert ring.size == 4096
        got: list[bytes] = []
        for _ in range(200):                    # 200 x 20 records of 64 bytes: 62 laps of the ring
            write(20)
            got += ring.drain(limit=1000)
        expected = [n for n in range(4000) if n % DISCARD_EVERY != DISCARD_EVERY - 1]
        assert seqs(got) == expected
        assert all(len(r) == 64 for r in got)
        assert ring.pending() == 0
    finally:
        ring.close()


def test_drain_stops_at_its_limit_and_goes_on_from_there(ring_pin):
    ring = RingBuffer(ring_pin)
    try:
        write(30)
        first, rest = ring.drain(limit=10), ring.drain(limit=100)
        assert seqs(first + rest) == [n for n in range(30) if n % DISCARD_EVERY != DISCARD_EVERY - 1]
        assert len(first) == 10
    finally:
        ring.close()


def test_the_consumer_position_outlives_the_reader(ring_pin):
    ring = RingBuffer(ring_pin)
    write(5)
    assert seqs(ring.drain(limit=2)) == [0, 1]
    ring.close()
    again = RingBuffer(ring_pin)
    try:
        write(1)
        assert seqs(again.drain(limit=100)) == [2, 3, 4, 5]
    finally:
        again.close()


def test_a_waiting_reader_is_woken_by_a_commit(ring_pin):
    ring = RingBuffer(ring_pin)
    try:
        result: list[list[bytes]] = []
        waiter = threading.Thread(target=lambda: result.append(ring.poll(timeout=30, limit=10)))
        waiter.start()
        threading.Event().wait(0.3)             # the reader is in epoll_wait by now
        write(1)
        waiter.join(timeout=20)
        assert not waiter.is_alive(), "a commit did not wake the reader"
        assert seqs(result[0]) == [0]
    finally:
        ring.close()


def test_a_missing_pin_is_an_error_naming_it(tmp_path):
    with pytest.raises(OSError) as info:
        RingBuffer(tmp_path / "nothing")
    assert info.value.errno == 2
