"""Tables driven to their limits with small map sizes: each full table is a clear error that
names its limit and changes nothing, and is counted where `status` and the metrics show it.
(The pod CIDR: test_bad_input.test_exhausted_pod_cidr; the ipcache: test_bad_input.
test_full_ipcache_unwinds_a_half_made_pod; the event ring: test_flows_datapath; identities:
tests/unit/test_identity.)"""
import re

import pytest
import yaml

from tests.support.node import Node, docs, namespace_doc, pod_doc

POLICY_SLOTS = 16


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("tight"), pod_cidr="10.217.0.0/26", maps={"policy": POLICY_SLOTS})
    try:
        n.up()
        n.apply(namespace_doc("ex"))
        yield n
    finally:
        n.purge()
    assert not n.leftovers()


def state(node) -> dict:
    return {"pods": sorted(node.pods()),
            "policies": node.cli("get", "policies", "-A", "-o", "json").stdout,
            "entries": {ref: node.cli("bpf", "policy", "get", ref, check=False).stdout for ref in sorted(node.pods())},
            "identities": node.cli("get", "identities", "-o", "json").stdout}


def errors_counted(node, service: str, code: str) -> float:
    pattern = rf'^capillary_bus_request_errors_total\{{[^}}]*code="{code}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, node.metrics(service), re.MULTILINE))


def test_a_full_policy_map_refuses_pods_and_policies_and_changes_nothing(tight):
    made = 0
    for i in range(POLICY_SLOTS + 1):                   # every pod takes at least one entry
        r = tight.apply(pod_doc("ex", f"p{i}", {"app": "p"}), check=False)
        if r.returncode != 0:
            break
        made += 1
    else:
        pytest.fail("the policy map never filled up")
    assert f"more than its {POLICY_SLOTS} (maps.policy in the node config)" in r.stderr, r.stderr
    assert made >= 1
    before = state(tight)
    counted = errors_counted(tight, "policyd", "exhausted")
    assert counted >= 1

    again = tight.apply(pod_doc("ex", "again"), check=False)
    assert again.returncode != 0 and "maps.policy" in again.stderr
    policy = yaml.safe_dump({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                             "metadata": {"name": "wide", "namespace": "ex"},
                             "spec": {"endpointSelector": {"matchLabels": {"app": "p"}},
                                      "ingress": [{"toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"}]}]}
                                                  for p in range(1000, 1000 + POLICY_SLOTS)]}})
    refused = tight.apply(policy, check=False)
    assert refused.returncode != 0 and "maps.policy" in refused.stderr, refused.stderr
    assert state(tight) == before
    assert errors_counted(tight, "policyd", "exhausted") >= counted + 2
    st = tight.status()["services"]["policyd"]
    assert st["healthy"]

    # Room again: one pod goes, another fits.
    tight.cli("delete", "pod", "ex/p0")
    tight.apply(pod_doc("ex", "after"))
    assert "ex/after" in tight.pods()


def test_status_shows_each_table_against_its_capacity(tight):
    services = tight.status()["services"]
    assert services["endpointd"]["counters"]["ips_capacity"] == 61
    assert services["routed"]["counters"]["ipcache_capacity"] == 65536
    assert services["routed"]["counters"]["ipcache_entries"] >= 2
    routed = tight.cli("status").stdout
    assert re.search(r"ipcache_entries=\d+, ipcache_capacity=65536", routed), routed
    metrics = tight.metrics("routed")
    assert re.search(r"^capillary_ipcache_capacity 65536\.0$", metrics, re.MULTILINE)
