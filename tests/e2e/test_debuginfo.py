"""`capillary debuginfo`: one archive with status, config, objects, maps, flows, metrics,
kernel state and logs from a real node; on a stopped node, what can still be read."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import ping


def read(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        root = tar.getnames()[0].split("/")[0]
        return {m.name.removeprefix(root + "/"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def dbg(node):
    node.apply(docs(namespace_doc("dbg"), pod_doc("dbg", "a"), pod_doc("dbg", "b")))
    assert ping(node.netns("dbg/a"), node.pod_ip("dbg/b"))
    try:
        yield node
    finally:
        node.cli("delete", "namespace", "dbg")


def test_the_archive_holds_every_part(dbg, tmp_path):
    node = dbg
    path = tmp_path / "info.tar.gz"
    proc = node.cli("debuginfo", "-f", str(path))
    assert proc.stdout.startswith(f"wrote {path} (") and "could not" not in proc.stdout
    assert os.stat(path).st_mode & 0o777 == 0o600
    files = read(path)
    pods = node.pods()
    for name in ("status.json", "config.yaml", "versions.txt", "objects/pods.json", "objects/namespaces.json",
                 "objects/identities.json", "objects/policies.json", "objects/ipcache.json", "flows/recent.json",
                 "flows/drops.json", "maps/endpoints.json", "maps/ipcache.json", "maps/policy.json",
                 "maps/conntrack.json", "maps/metrics.json", "maps/events_stats.json", "kernel/iptables.txt",
                 "kernel/routes.txt", "logs/flowd.log", "logs/endpointd.log", "metrics/flowd.txt",
                 f"kernel/tc-{pods['dbg/a']['status']['hostInterface']}.txt"):
        assert files.get(name), f"{name} is missing or empty"
    assert "errors.txt" not in files
    assert json.loads(files["status.json"])["healthy"] is True
    assert {p["spec"]["name"] for p in json.loads(files["objects/pods.json"])} >= {"a", "b"}
    assert {e["ip"] for e in json.loads(files["maps/endpoints.json"])} >= {node.pod_ip("dbg/a"), node.pod_ip("dbg/b")}
    flows = json.loads(files["flows/recent.json"])["flows"]
    assert any(f["IP"]["source"] == node.pod_ip("dbg/a") and f["IP"]["destination"] == node.pod_ip("dbg/b")
               for f in flows if "IP" in f)
    assert b"hubble_flows_processed_total" in files["metrics/flowd.txt"]
    password = json.loads((node.state_dir / "nats" / "admin.context.json").read_text())["password"].encode()
    assert not [name for name, data in files.items() if password in data], "credentials leaked into the archive"


def test_a_stopped_node_still_gives_what_can_be_read(dbg, tmp_path):
    node = dbg
    node.down()
    try:
        path = tmp_path / "down.tar.gz"
        proc = node.cli("debuginfo", "-f", str(path))
        assert "see errors.txt" in proc.stdout
        files = read(path)
        assert b"NATS unreachable" in files["errors.txt"]
        assert files["maps/endpoints.json"] and files["logs/supervisor.log"] and files["config.yaml"]
        assert json.loads(files["status.json"])["healthy"] is False
    finally:
        node.up()
