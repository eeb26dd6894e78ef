"""`capillary delete -f` of many pods in a cluster: where each pod is comes from one listing
per namespace, not one per pod (N pods made N listings of N pods). A fake client stands in
for the bus (pure CLI logic); tests/e2e/test_pods.py deletes by file on a real node."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.cli import objects
from services.wire import subjects
from tests.support.node import docs, namespace_doc, pod_doc

NODES = [{"name": "n1", "healthy": True, "self": True}, {"name": "n2", "healthy": True}]
PODS = {"n1": ["a", "b"], "n2": ["c"]}           # node -> its pods in namespace x


class FakeClient:
    def __init__(self) -> None:
        self.config = SimpleNamespace(node="n1", cluster=SimpleNamespace(enabled=True))
        self.calls: list[tuple[str, str | None, str]] = []       # (subject, node, name)

    async def call(self, subject: str, message=None, timeout: float = 10.0, node: str | None = None):
        self.calls.append((subject, node, getattr(message, "name", "")))
        if subject == subjects.NODES_LIST:
            return NODES
        if subject == subjects.POD_LIST:
            return [{"spec": {"name": name, "namespace": "x"}} for name in PODS[node or "n1"]]
        if subject == subjects.POD_DELETE:
            return {"kind": "Pod", "name": message.name, "action": "deleted"}
        return {"kind": "Namespace", "name": message.name, "action": "deleted"}


def test_a_file_of_pods_is_located_with_one_listing_and_each_goes_to_its_node(tmp_path, capsys):
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(docs(namespace_doc("x"), *(pod_doc("x", name) for name in ("a", "b", "c"))))
    client = FakeClient()
    assert asyncio.run(objects.delete_file(client, str(manifest))) == 0
    listings = [c for c in client.calls if c[0] == subjects.POD_LIST]
    assert sorted(node or "n1" for _, node, _ in listings) == ["n1", "n2"]        # once per node
    deletes = {name: node for subject, node, name in client.calls if subject == subjects.POD_DELETE}
    assert deletes == {"a": None, "b": None, "c": "n2"}
    assert "pod/c deleted" in capsys.readouterr().out


def test_a_lone_node_deletes_pods_without_listing_them(tmp_path):
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(docs(*(pod_doc("x", name) for name in ("a", "b"))))
    client = FakeClient()
    client.config.cluster.enabled = False
    asyncio.run(objects.delete_file(client, str(manifest)))
    assert [(s, node) for s, node, _ in client.calls] == [(subjects.POD_DELETE, None)] * 2
