"""Bad input gets a one-line error naming the problem, a non-zero exit, a structured error
reply on NATS, and changes nothing: no pod, netns, veth, IP, map entry or identity."""
import asyncio
import json
import os
import subprocess
from pathlib import Path

import nats
import pytest

from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.ipcache import IpcacheMap
from services.wire import codec
from tests.support.node import Node, docs, namespace_doc, pod_doc


def snapshot(node) -> dict:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {
        "pods": sorted(node.pods()),
        "namespaces": node.cli("get", "namespaces", "-o", "json").stdout,
        "identities": node.cli("get", "identities", "-o", "json").stdout,
        "netns": sorted(p.name for p in Path("/run/netns").glob(f"cap-{node.name}_*")),
        "links": sorted(l.split(": ")[1].split("@")[0] for l in links.splitlines() if f": {node.lxc_prefix}" in l),
        "endpoints": sorted(EndpointMap(Path(node.bpf_root)).all()),
        # Host entries (identity 1) follow the host's addresses, which other nodes may change.
        "ipcache": {k: v for k, v in IpcacheMap(Path(node.bpf_root)).all().items() if v != 1},
    }


@pytest.fixture(scope="module")
def base(node):
    node.apply(docs(namespace_doc("ok"), pod_doc("ok", "a")))
    return node


def expect_refused(node, text: str, *needles: str) -> None:
    before = snapshot(node)
    r = node.apply(text, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(node) == before


CASES = {
    "malformed yaml": ("kind: Pod\nmetadata: [unclosed", "not valid YAML or JSON"),
    "unknown kind": ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "kind 'Service'", "not supported"),
    "unknown field": (pod_doc("ok", "b").replace("labels:", "lables:"), "metadata.lables: unknown field"),
    "pod spec field": ("apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: ok}\nspec: {containers: []}\n",
                       "spec.containers: unknown field"),
    "bad name": (pod_doc("ok", "B_ad"), "metadata.name", "not a valid pod name"),
    "bad label": (pod_doc("ok", "b", {"app": "has space"}), "metadata.labels.app"),
    "duplicate in file": (docs(pod_doc("ok", "b"), pod_doc("ok", "b")), "duplicate object"),
    "valid then invalid": (docs(pod_doc("ok", "b"), pod_doc("ok", "c").replace("labels:", "lables:")),
                           "metadata.lables: unknown field"),
    "missing namespace": (pod_doc("nope", "b"), 'namespace "nope" not found'),
    "netns not there": (pod_doc("ok", "b", netns="/run/netns/does-not-exist"),
                        "spec.netns", "is not a network namespace"),
    "netns not a netns": (pod_doc("ok", "b", netns="/etc/hostname"), "spec.netns", "is not a network namespace"),
    "netns relative": (pod_doc("ok", "b", netns="run/netns/x"), "spec.netns", "absolute path"),
}


def host_routes() -> str:
    """The host's default route (other nodes on this machine add and remove pod routes)."""
    return subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("path, needle", [
    ("/proc/1/ns/net", ""),          # the host's, or unreadable where pid 1 is hidden
    ("/proc/self/ns/net", "is the host's own network namespace"),   # endpointd's own
    ("BIND", "is the host's own network namespace"),                 # a bind mount of it
    ("/proc/self/ns/uts", "is not a network namespace (a uts namespace)"),
    ("/run", "is not a network namespace (a directory)"),
    ("/dev/null", "is not a network namespace (a character device)"),
    ("FIFO", "is not a network namespace (a FIFO)"),
])
def test_spec_netns_takes_only_a_pods_network_namespace(base, tmp_path, path, needle):
    # Adopting the host's namespace would move eth0 and the default route into a "pod";
    # opening a FIFO would block endpointd's netlink thread for good.
    if path == "FIFO":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif path == "BIND":
        path = str(tmp_path / "hostns")
        Path(path).touch()
        subprocess.run(["mount", "--bind", "/proc/self/ns/net", path], check=True)
    routes = host_routes()
    try:
        expect_refused(base, pod_doc("ok", "b", netns=path), f"spec.netns: {path} {needle}".strip())
    finally:
        if path.endswith("hostns"):
            subprocess.run(["umount", path])
    assert host_routes() == routes
    expect_refused(base, pod_doc("ok", "b", netns="/etc/hostname"), "spec.netns")   # still serving


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_and_nothing_changes(base, case):
    text, *needles = CASES[case]
    expect_refused(base, text, *needles)


def test_duplicate_pod_via_create(base):
    before = snapshot(base)
    r = base.cli("create", "-f", "-", input=pod_doc("ok", "a"), check=False)
    assert r.returncode != 0 and r.stderr.strip() == 'error: pod "ok/a" already exists'
    assert snapshot(base) == before


def test_delete_of_a_missing_pod(base):
    r = base.cli("delete", "pod", "ok/ghost", check=False)
    assert r.returncode != 0 and r.stderr.strip() == 'error: pod "ok/ghost" not found'


async def _request(node, subject, payload: bytes) -> dict:
    c = json.loads((node.state_dir / "nats" / "admin.context.json").read_text())
    nc = await nats.connect(c["url"], user=c["user"], password=c["password"])
    try:
        return codec.decode((await nc.request(subject, payload, timeout=5)).data)
    finally:
        await nc.close()


@pytest.mark.parametrize("payload,needle", [
    (b"\xc1not msgpack", "not valid msgpack"),
    (codec.encode({"v": 1, "kind": "apply"}), "document: required field is missing"),
    (codec.encode({"v": 1, "kind": "apply", "document": {"apiVersion": "v1", "kind": "Pod",
                                                          "metadata": {"name": "x", "namespace": "ok"},
                                                          "spec": {"netns": 5}}}), "spec.netns"),
    (codec.encode({"v": 9, "kind": "apply", "document": {}}), "unsupported schema version"),
])
def test_nats_requests_get_structured_error_replies(base, payload, needle):
    before = snapshot(base)
    reply = asyncio.run(_request(base, "capillary.pod.apply", payload))
    assert reply["ok"] is False and reply["error"]["code"] == "invalid"
    assert needle in reply["error"]["message"]
    assert snapshot(base) == before


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("small"), pod_cidr="10.213.0.0/29")
    try:
        n.up()
        yield n
    finally:
        n.purge()
        assert not n.leftovers()


def test_exhausted_pod_cidr(small_node):
    n = small_node
    n.apply(docs(namespace_doc("s"), *(pod_doc("s", f"p{i}") for i in range(5))))   # .2 - .6
    expect_refused(n, pod_doc("s", "p5"), "pod CIDR 10.213.0.0/29 is exhausted")
    n.cli("delete", "pod", "s/p0")
    n.apply(pod_doc("s", "p5"))                       # the released address is usable again
    assert len([p for p in n.pods() if p.startswith("s/")]) == 5


def test_full_ipcache_unwinds_a_half_made_pod(tmp_path):
    # The ipcache fills up after the veth, netns, IP and identity exist: all of it is undone.
    n = Node(tmp_path, pod_cidr="10.214.0.0/26", maps={"ipcache": 16})
    try:
        n.up()
        n.apply(namespace_doc("f"))
        i = 0
        while True:
            r = n.apply(pod_doc("f", f"p{i}", {"n": str(i)}), check=False)
            if r.returncode != 0:
                break
            i += 1
            assert i < 16, "the ipcache never filled up"
        assert "ipcache map is full (16 entries" in r.stderr
        expect_refused(n, pod_doc("f", "again", {"n": "again"}), "ipcache map is full")
        assert len(snapshot(n)["links"]) == i
    finally:
        n.purge()
    assert not n.leftovers()
