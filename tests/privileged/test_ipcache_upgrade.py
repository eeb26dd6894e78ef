"""An ipcache pinned by a capillary before tunnel mode (8-byte values, no tunnel_endpoint):
programs of this one cannot use it, so routed moves it aside, compiles the new map and copies
every entry over; anything else fails clearly, and nothing is lost or touched."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.datapath import loader
from services.datapath.maps import ipcache
from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.pinned import MapError
from services.runtime.config import DatapathConfig, NodeConfig
from tests.support.bpffs import scratch_root

OLD = {"0.0.0.0/0": (2, 1), "10.9.0.5/32": (300, 3), "192.168.1.7/32": (1, 2)}


def pin_ipcache(root: Path, value_c: str, entries: dict[str, tuple[int, int]]) -> None:
    """An LPM trie pinned at ROOT/ipcache with values of struct {VALUE_C}, holding ENTRIES."""
    from bcc import BPF
    text = (f"struct k {{ u32 prefixlen; u32 ip; }};\nstruct v {{ {value_c} }};\n"
            f'BPF_TABLE_PINNED("lpm_trie", struct k, struct v, old_ipcache, 64, "{root}/ipcache", BPF_F_NO_PREALLOC);\n')
    bpf = BPF(text=text.encode())
    table = bpf[b"old_ipcache"]
    for cidr, (identity, flags) in entries.items():
        key = ipcache.key_for(cidr)
        value = table.Leaf()
        value.identity, value.flags = identity, flags
        table[table.Key.from_buffer_copy(bytes(key))] = value


@pytest.fixture
def root():
    with scratch_root("upgrade") as path:
        yield path


def test_an_old_ipcache_is_upgraded_with_every_entry(root):
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)))
    pin_ipcache(root, "u32 identity; u32 flags;", OLD)
    with pytest.raises(MapError, match="8-byte values.*routed upgrades"):
        loader.pin_maps("policyd_maps.c", config)        # programs would fail the verifier
    assert ipcache.set_aside_old_layout(root) is True
    loader.pin_maps("routed_maps.c", config)
    assert ipcache.restore_old_layout(root) == len(OLD)
    new = IpcacheMap(root)
    try:
        assert new.all() == {cidr: identity for cidr, (identity, _f) in OLD.items()}
        assert {ipcache.cidr_of(k): v.flags for k, v in new.map.items()} == {c: f for c, (_i, f) in OLD.items()}
        assert new.tunnel_endpoint("10.9.0.5/32") == ""
    finally:
        new.close()
    assert not (root / ipcache.OLD_LAYOUT_PIN).exists()
    assert ipcache.set_aside_old_layout(root) is False       # done: the next start does nothing
    ipcache.check_layout(root)


def test_an_upgrade_cut_short_resumes_and_keeps_newer_entries(root):
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=str(root)))
    pin_ipcache(root, "u32 identity; u32 flags;", OLD)
    assert ipcache.set_aside_old_layout(root) is True
    loader.pin_maps("routed_maps.c", config)
    new = IpcacheMap(root)
    new.upsert("10.9.0.5/32", 301, 5, "192.168.1.2")          # written before the crash
    new.close()
    assert ipcache.set_aside_old_layout(root) is True         # the next start finds the old map
    assert ipcache.restore_old_layout(root) == len(OLD) - 1
    new = IpcacheMap(root)
    try:
        assert new.lookup_exact("10.9.0.5/32") == 301 and new.tunnel_endpoint("10.9.0.5/32") == "192.168.1.2"
        assert len(new.all()) == len(OLD)
    finally:
        new.close()


def test_an_ipcache_of_an_unknown_layout_is_refused_and_left_alone(root):
    pin_ipcache(root, "u32 identity; u32 flags; u64 more;", OLD)
    with pytest.raises(MapError, match="16-byte values"):
        ipcache.set_aside_old_layout(root)
    assert (root / ipcache.PIN_NAME).exists() and not (root / ipcache.OLD_LAYOUT_PIN).exists()
