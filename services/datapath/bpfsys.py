"""bpf(2) for processes that use pinned maps but compile nothing: open a pin, look up,
update, delete, walk keys, read a map's info.

libbcc would do the same through its wrappers, but loading it maps LLVM and clang into the
process (about 80 MB resident once touched); a service that only reads its maps, and the
CLI, have no need of that. Compiling stays with bcc (services/datapath/loader.py).
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import platform

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long

SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_ENABLE_STATS = 32

BPF_STATS_RUN_TIME = 0
BPF_CALL = 0x85             # the opcode of a helper call (BPF_JMP | BPF_CALL)

BPF_ANY = 0
BPF_NOEXIST = 1


class _ElemAttr(ct.Structure):
    """union bpf_attr, for the BPF_MAP_*_ELEM and GET_NEXT_KEY commands."""
    _fields_ = [("map_fd", ct.c_uint32), ("pad", ct.c_uint32), ("key", ct.c_uint64),
                ("value", ct.c_uint64), ("flags", ct.c_uint64)]


class _BatchAttr(ct.Structure):
    """union bpf_attr, for the BPF_MAP_*_BATCH commands."""
    _fields_ = [("in_batch", ct.c_uint64), ("out_batch", ct.c_uint64), ("keys", ct.c_uint64),
                ("values", ct.c_uint64), ("count", ct.c_uint32), ("map_fd", ct.c_uint32),
                ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class _ObjAttr(ct.Structure):
    """union bpf_attr, for BPF_OBJ_GET."""
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


class _InfoAttr(ct.Structure):
    """union bpf_attr, for BPF_OBJ_GET_INFO_BY_FD."""
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class MapInfo(ct.Structure):
    """The head of struct bpf_map_info (the kernel fills what fits in info_len)."""
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("name", ct.c_char * 16)]


class ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info, up to verified_insns (kernel 5.16+)."""
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32),
                ("map_ids", ct.c_uint64), ("name", ct.c_char * 16), ("ifindex", ct.c_uint32),
                ("gpl_compatible", ct.c_uint32), ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64),
                ("nr_jited_ksyms", ct.c_uint32), ("nr_jited_func_lens", ct.c_uint32),
                ("jited_ksyms", ct.c_uint64), ("jited_func_lens", ct.c_uint64), ("btf_id", ct.c_uint32),
                ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64), ("nr_func_info", ct.c_uint32),
                ("nr_line_info", ct.c_uint32), ("line_info", ct.c_uint64), ("jited_line_info", ct.c_uint64),
                ("nr_jited_line_info", ct.c_uint32), ("line_info_rec_size", ct.c_uint32),
                ("jited_line_info_rec_size", ct.c_uint32), ("nr_prog_tags", ct.c_uint32),
                ("prog_tags", ct.c_uint64), ("run_time_ns", ct.c_uint64), ("run_cnt", ct.c_uint64),
                ("recursion_misses", ct.c_uint64), ("verified_insns", ct.c_uint32), ("pad", ct.c_uint32)]


class _StatsAttr(ct.Structure):
    """union bpf_attr, for BPF_ENABLE_STATS."""
    _fields_ = [("type", ct.c_uint32)]


class _TestRunAttr(ct.Structure):
    """union bpf_attr, for BPF_PROG_TEST_RUN."""
    _fields_ = [("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
                ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
                ("repeat", ct.c_uint32), ("duration", ct.c_uint32)]


def _bpf(cmd: int, attr: ct.Structure) -> int:
    """The syscall's result, or OSError with its errno."""
    rc = _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if rc < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _addr(obj) -> int:
    return ct.addressof(obj)


def obj_get(path: str) -> int:
    """A new fd for the object pinned at PATH."""
    name = ct.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=_addr(name)))


def lookup(fd: int, key, value) -> bool:
    """Fill VALUE with KEY's value; False when KEY is not in the map."""
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags))


def delete(fd: int, key) -> bool:
    """Delete KEY; False when it was not there."""
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def next_key(fd: int, key, out) -> bool:
    """Fill OUT with the key after KEY (None: the first key); False at the end."""
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, _ElemAttr(map_fd=fd, key=_addr(key) if key is not None else 0,
                                              value=_addr(out)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_batch(fd: int, token, next_token, keys, values, count: int, first: bool) -> tuple[int, bool]:
    """Fill KEYS and VALUES (arrays of COUNT) with the entries after TOKEN (FIRST: from the
    start); NEXT_TOKEN receives where to go on. (how many were filled, whether that was
    the last of them). Hash maps' tokens are a u32 bucket number."""
    attr = _BatchAttr(in_batch=0 if first else _addr(token), out_batch=_addr(next_token), keys=_addr(keys),
                      values=_addr(values), count=count, map_fd=fd)
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def update_batch(fd: int, keys, values, count: int, flags: int = BPF_ANY) -> int:
    """Write COUNT entries from the arrays KEYS and VALUES in one call. On an error the
    OSError carries ``done``: how many were written before it."""
    attr = _BatchAttr(keys=_addr(keys), values=_addr(values), count=count, map_fd=fd, elem_flags=flags)
    try:
        _bpf(BPF_MAP_UPDATE_BATCH, attr)
    except OSError as exc:
        exc.done = attr.count
        raise
    return attr.count


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=_addr(info)))
    return info


def prog_info(fd: int) -> ProgInfo:
    """The program's info: its run-time statistics (run_time_ns, run_cnt; counted only while
    statistics are enabled) and its size after the verifier (xlated_prog_len, 8 bytes an
    instruction)."""
    info = ProgInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=_addr(info)))
    return info


def prog_xlated(fd: int) -> list[int]:
    """The program's instructions as the kernel runs them (what `bpftool prog dump xlated`
    prints), as 64-bit words: the opcode is the low byte."""
    count = prog_info(fd).xlated_prog_len // 8
    insns = (ct.c_uint64 * count)()
    info = ProgInfo(xlated_prog_len=count * 8, xlated_prog_insns=_addr(insns))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=_addr(info)))
    return list(insns[:info.xlated_prog_len // 8])


def enable_run_time_stats() -> int:
    """Turn on the kernel's per-program run-time statistics (as sysctl
    kernel.bpf_stats_enabled=1 does) for as long as the returned fd is open. The kernel
    counts holders, so closing it never turns off statistics someone else turned on."""
    return _bpf(BPF_ENABLE_STATS, _StatsAttr(type=BPF_STATS_RUN_TIME))


def test_run(fd: int, data: bytes, repeat: int) -> tuple[int, int]:
    """Run the program REPEAT times on a packet DATA in the kernel: (its return value, mean
    nanoseconds a run as the kernel timed the loop)."""
    buf = ct.create_string_buffer(data, len(data))
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(data), data_in=_addr(buf), repeat=repeat)
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, attr.duration


def run_once(fd: int, data: bytes) -> tuple[int, bytes]:
    """Run the program once on a packet DATA in the kernel: (its return value, the packet as
    the program left it)."""
    buf = ct.create_string_buffer(data, len(data))
    out = ct.create_string_buffer(len(data) + 256)
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(data), data_in=_addr(buf),
                        data_size_out=len(out), data_out=_addr(out), repeat=1)
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, out.raw[:attr.data_size_out]
