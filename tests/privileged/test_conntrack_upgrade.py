"""A conntrack map pinned by an older capillary (32-byte entries, counts in a per-CPU map
beside it) cannot serve this one's programs: compiling lxc.c for endpointd unpins both, so
the programs load with a map of the current layout. (Only established connections lose
their entries: their next packets meet policy again.)"""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

import pytest

from services.datapath import bpfsys, loader
from services.datapath.maps.conntrack import PIN_NAME, CtEntry, drop_old_layout
from services.runtime.config import DatapathConfig, NodeConfig
from tests.support.bpffs import scratch_root

OLD_MAPS = """
struct k { u32 saddr; u32 daddr; u16 sport; u16 dport; u8 protocol; u8 pad[3]; };
struct v { u64 created; u64 last_seen; u32 flags; u32 rule_id; u16 reported[4]; };
struct a { u64 packets; u64 bytes; };
BPF_TABLE_PINNED("lru_hash", struct k, struct v, old_ct, 64, "ROOT/ct");
BPF_TABLE_PINNED("lru_percpu_hash", struct k, struct a, old_acct, 64, "ROOT/ct_acct");
"""


@pytest.fixture
def root():
    with scratch_root("ct-upgrade") as path:
        yield path


def value_size(path: Path) -> int:
    fd = bpfsys.obj_get(str(path))
    try:
        return bpfsys.map_info(fd).value_size
    finally:
        os.close(fd)


def test_endpointd_compile_replaces_an_old_layout(root):
    from bcc import BPF
    old = BPF(text=OLD_MAPS.replace("ROOT", str(root)).encode())
    old.cleanup()
    assert value_size(root / PIN_NAME) == 32 and (root / "ct_acct").exists()

    config = NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)))
    for source in ("routed_maps.c", "policyd_maps.c", "flowd_maps.c"):
        loader.pin_maps(source, config)
    fds = loader.pin_programs("lxc.c", config, ("from_container",))
    assert fds["from_container"] > 0
    assert value_size(root / PIN_NAME) == ct.sizeof(CtEntry)
    assert not (root / "ct_acct").exists()


def test_a_current_map_is_kept(root):
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)))
    loader.compile_source("lxc.c", config)
    before = (root / PIN_NAME).stat().st_ino
    assert not drop_old_layout(root)
    assert (root / PIN_NAME).stat().st_ino == before
