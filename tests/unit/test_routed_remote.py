"""routed's API for pods on other nodes: claims with a tunnel endpoint, kept across shadowing
and restarts, on a dict-backed ipcache and a dict-backed store of shadowed claims (the real
store, in KV: tests/privileged/test_ipcache_shadowed_kv.py)."""
import asyncio

import pytest

from services.datapath.maps.ipcache import FakeIpcacheMap
from services.routed.claims import Claim, Claims
from services.routed.service import SOURCES, RoutedService
from services.runtime.bus import ServiceError
from services.runtime.config import NodeConfig


class MemoryShadowStore:
    """ShadowStore's calls over a list that outlives the service (a restart)."""
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    async def load(self) -> list[tuple]:
        return list(self.rows)

    async def save(self, rows: list[tuple]) -> int:
        self.rows = list(rows)
        return 0


STORES: dict[str, MemoryShadowStore] = {}


def routed(tmp_path, ipcache: FakeIpcacheMap) -> RoutedService:
    svc = RoutedService(NodeConfig(stateDir=str(tmp_path)))
    svc.ipcache = ipcache
    svc._lock = asyncio.Lock()
    svc.shadow = STORES.setdefault(str(tmp_path), MemoryShadowStore())
    svc.shadow_unsaved = 0
    asyncio.run(svc._load_claims())
    return svc


def test_a_remote_pod_is_written_with_its_node(tmp_path):
    ipcache = FakeIpcacheMap()
    svc = routed(tmp_path, ipcache)
    now = asyncio.run(svc.upsert_remote("10.2.0.7", 300, "192.168.1.2"))
    assert now == Claim("remote", 300, "192.168.1.2")
    assert ipcache.tunnel_endpoint("10.2.0.7/32") == "192.168.1.2"
    assert ipcache.entries["10.2.0.7/32"].flags == SOURCES["remote"]
    assert svc.remote_pods() == {"10.2.0.7/32": now}
    asyncio.run(svc.upsert_remote("10.2.0.8", 301, ""))          # native routing: no endpoint
    assert ipcache.tunnel_endpoint("10.2.0.8/32") == ""


def test_a_local_claim_shadows_a_remote_one_which_comes_back_with_its_node(tmp_path):
    ipcache = FakeIpcacheMap()
    svc = routed(tmp_path, ipcache)
    asyncio.run(svc.upsert_remote("10.2.0.7", 300, "192.168.1.2"))
    svc._set("10.2.0.7/32", "endpoint", 400)
    asyncio.run(svc._save_shadowed())
    assert ipcache.tunnel_endpoint("10.2.0.7/32") == "" and ipcache.lookup_exact("10.2.0.7/32") == 400
    again = routed(tmp_path, ipcache)                              # a restart: map + stored shadowed claims
    assert again.claims.get("10.2.0.7/32", "remote") == Claim("remote", 300, "192.168.1.2")
    again._set("10.2.0.7/32", "endpoint", None)
    assert ipcache.tunnel_endpoint("10.2.0.7/32") == "192.168.1.2" and ipcache.lookup_exact("10.2.0.7/32") == 300


def test_forgetting_a_remote_pod(tmp_path):
    ipcache = FakeIpcacheMap()
    svc = routed(tmp_path, ipcache)
    asyncio.run(svc.upsert_remote("10.2.0.7/32", 300, "192.168.1.2"))
    assert asyncio.run(svc.delete_remote("10.2.0.7")) is True
    assert ipcache.all() == {} and svc.remote_pods() == {}
    assert asyncio.run(svc.delete_remote("10.2.0.7")) is False


def test_bad_remote_input_changes_nothing(tmp_path):
    ipcache = FakeIpcacheMap()
    svc = routed(tmp_path, ipcache)
    with pytest.raises(ServiceError, match="^node_ip:"):
        asyncio.run(svc.upsert_remote("10.2.0.7", 300, "not-an-ip"))
    assert ipcache.all() == {} and svc.claims.shadowed() == [] and isinstance(svc.claims, Claims)
