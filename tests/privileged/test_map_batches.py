"""Batched writes to the real pinned LPM tries: the ipcache and the policy map take thousands
of entries with BPF_MAP_UPDATE_BATCH, policy entries already in the map keep their counters,
and a batch that does not fit says so and how many went in."""
from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest

from services.datapath import loader
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.maps.policy import PREFIX_PEER, Key, PolicyMap, Value
from services.datapath.pinned import MapFull
from services.runtime.config import DatapathConfig, MapSizes, NodeConfig


@pytest.fixture
def root():
    root = f"/sys/fs/bpf/capillary-batch-test-{os.getpid()}"
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=root), maps=MapSizes(ipcache=4096, policy=4096))
    try:
        loader.pin_maps("routed_maps.c", config)
        loader.pin_maps("policyd_maps.c", config)
        yield Path(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def hosts(count: int) -> list[str]:
    first = int(ipaddress.IPv4Address("100.64.0.1"))
    return [f"{ipaddress.IPv4Address(first + i)}/32" for i in range(count)]


def test_the_ipcache_takes_a_batch_in_one_call_and_deletes_it(root):
    ipcache = IpcacheMap(root)
    try:
        ipcache.upsert_many([(c, (1 << 24) + i, 4, "") for i, c in enumerate(hosts(3000))])
        assert ipcache.map._batched, "the kernel took BPF_MAP_UPDATE_BATCH for an LPM trie"
        held = ipcache.all()
        assert len(held) == 3000 and held["100.64.0.1/32"] == 1 << 24
        assert ipcache.delete_many(hosts(3000) + ["10.0.0.0/8"]) == 3000
        assert ipcache.all() == {}
    finally:
        ipcache.close()


def test_a_batch_that_does_not_fit_says_how_many_went_in(root):
    ipcache = IpcacheMap(root)
    try:
        with pytest.raises(MapFull) as caught:
            ipcache.upsert_many([(c, 300, 4, "") for c in hosts(5000)])
        assert caught.value.done == len(ipcache.all()) == 4096
    finally:
        ipcache.close()


def test_policy_entries_in_the_map_keep_their_counters_and_new_ones_start_at_zero(root):
    policy = PolicyMap(root)
    try:
        old = Key(7, False, 300, 0, 0, PREFIX_PEER)
        policy.write(old, Value(0, 1))
        raw = policy.map.get(old.raw())
        raw.packets, raw.bytes = 5, 500
        policy.map.update(old.raw(), raw)
        new = [Key(7, False, 1000 + i, 0, 0, PREFIX_PEER) for i in range(2000)]
        policy.write_many([(old, Value(0, 2))] + [(k, Value(0, 2)) for k in new], present={old})
        counted = policy.counted([old, new[0]])
        assert (counted[old].value.rule_id, counted[old].packets, counted[old].bytes) == (2, 5, 500)
        assert (counted[new[0]].packets, counted[new[0]].bytes) == (0, 0)
        assert len(policy.all()) == 2001
    finally:
        policy.close()
