"""Policies over NATS and from the CLI: replies with revisions, errors that name the field,
a policy map that would overflow, and none of them changing anything."""
import asyncio
import json
from pathlib import Path

import nats
import pytest
import yaml

from services.datapath.maps.ipcache import IpcacheMap
from services.datapath.maps.policy import PolicyMap
from services.wire import codec
from tests.support.node import Node, docs, namespace_doc, pod_doc


def state(node) -> dict:
    return {"policies": node.cli("get", "policies", "-o", "json").stdout,
            "entries": {(k.endpoint_id, k.egress, k.identity, k.protocol, k.port, k.prefixlen): (c.value.flags, c.value.rule_id)
                        for k, c in PolicyMap(Path(node.bpf_root)).all().items()},
            # host entries (identity 1) follow the host's addresses, which other nodes change
            "ipcache": {k: v for k, v in IpcacheMap(Path(node.bpf_root)).all().items() if v != 1},
            "identities": node.cli("get", "identities", "-o", "json").stdout}


@pytest.fixture(scope="module")
def base(node):
    node.apply(docs(namespace_doc("p"), pod_doc("p", "web", {"app": "web"}), pod_doc("p", "db", {"app": "db"})))
    return node


async def _request(node, subject, body: dict | bytes) -> dict:
    c = json.loads((node.state_dir / "nats" / "admin.context.json").read_text())
    nc = await nats.connect(c["url"], user=c["user"], password=c["password"])
    try:
        payload = body if isinstance(body, bytes) else codec.encode(body)
        return codec.decode((await nc.request(subject, payload, timeout=10)).data)
    finally:
        await nc.close()


POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "web", "namespace": "p"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}}


def test_apply_and_delete_over_nats_reply_with_revisions(base):
    r1 = asyncio.run(_request(base, "capillary.policy.apply", {"v": 1, "kind": "apply", "document": POLICY}))
    assert r1["ok"] and r1["result"]["action"] == "created" and r1["result"]["revision"] > 0
    changed = {**POLICY, "spec": {**POLICY["spec"], "ingress": [{"fromEndpoints": [{}]}]}}
    r2 = asyncio.run(_request(base, "capillary.policy.apply", {"v": 1, "kind": "apply", "document": changed}))
    assert r2["ok"] and r2["result"]["action"] == "configured"
    assert r2["result"]["revision"] > r1["result"]["revision"]
    # Only what changed is rewritten: the db:8080 entry goes, one entry per pod of p comes.
    assert (r2["result"]["entries_written"], r2["result"]["entries_removed"]) == (2, 1)
    r3 = asyncio.run(_request(base, "capillary.policy.apply", {"v": 1, "kind": "apply", "document": changed}))
    assert r3["result"]["action"] == "unchanged" and r3["result"]["entries_written"] == 0
    d = asyncio.run(_request(base, "capillary.policy.delete",
                             {"v": 1, "kind": "ref", "name": "web", "namespace": "p",
                              "object_kind": "CiliumNetworkPolicy"}))
    assert d["ok"] and d["result"]["action"] == "deleted"
    assert "web" not in base.cli("get", "policies").stdout


def _bad(port):
    return {**POLICY, "spec": {**POLICY["spec"], "ingress": [{"toPorts": [{"ports": [{"port": port}]}]}]}}


BAD = {
    "port": (_bad("a_b"), 'spec.ingress[0].toPorts[0].ports[0].port: "a_b" is not a port number or name'),
    "port range": (_bad("70000"), "spec.ingress[0].toPorts[0].ports[0].port"),
    "selector operator": ({**POLICY, "spec": {"endpointSelector": {"matchExpressions": [
        {"key": "app", "operator": "Near", "values": ["x"]}]}, "ingress": [{}]}}, "spec.endpointSelector.matchExpressions[0].operator"),
    "cidr": ({**POLICY, "spec": {**POLICY["spec"], "egress": [{"toCIDR": ["10.0.0.300/8"]}]}}, "spec.egress[0].toCIDR[0]"),
    "protocol": ({**POLICY, "spec": {**POLICY["spec"], "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "QUIC"}]}]}]}},
                 "spec.ingress[0].toPorts[0].ports[0].protocol"),
    "unknown field": ({**POLICY, "spec": {**POLICY["spec"], "ingres": []}}, "spec.ingres: unknown field"),
    "unknown kind": ({**POLICY, "apiVersion": "cilium.io/v3"}, "not supported"),
    "k8s end port": ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "p"},
                      "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}},
                     "spec.ingress[0].ports[0].endPort"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_policies_name_the_field_and_change_nothing(base, case):
    doc, needle = BAD[case]
    before = state(base)
    r = base.apply(yaml.safe_dump(doc), check=False)
    assert r.returncode != 0 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if doc["apiVersion"] != "cilium.io/v3":
        reply = asyncio.run(_request(base, "capillary.policy.apply", {"v": 1, "kind": "apply", "document": doc}))
        assert reply["ok"] is False and reply["error"]["code"] == "invalid" and needle in reply["error"]["message"]
    assert state(base) == before


def test_delete_of_a_missing_policy(base):
    r = base.cli("delete", "cnp", "nope", "-n", "p", check=False)
    assert r.returncode != 0 and 'policy "p/nope" not found' in r.stderr


def test_a_policy_that_would_overflow_the_map_changes_nothing(tmp_path):
    n = Node(tmp_path, pod_cidr="10.216.0.0/24", maps={"policy": 64})
    try:
        n.up()
        n.apply(docs(namespace_doc("o"), pod_doc("o", "a"), pod_doc("o", "b")))
        small = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "small", "namespace": "o"},
                 "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}
        n.apply(yaml.safe_dump(small))
        before = state(n)
        ports = [{"port": str(p), "protocol": "TCP"} for p in range(1000, 1040)]
        big = {**small, "metadata": {"name": "big", "namespace": "o"},
               "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": ports}]}]}}
        r = n.apply(yaml.safe_dump(big), check=False)
        assert r.returncode != 0 and "the policy map would hold" in r.stderr and "maps.policy" in r.stderr
        assert state(n) == before
    finally:
        n.purge()
    assert not n.leftovers()
