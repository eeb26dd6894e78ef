"""A policy's toCIDR naming a pod or node address never takes over their ipcache entries:
the higher source stays in force, and when it goes the policy's claim comes back, even
across a restart of routed."""
import json
import os
import signal
import time

import yaml

from tests.support.node import docs, namespace_doc, pod_doc


def ipcache(node) -> dict[str, tuple[int, str]]:
    items = json.loads(node.cli("get", "ipcache", "-o", "json").stdout)
    return {i["cidr"]: (i["identity"], i["source"]) for i in items}


def cidr_policy(cidrs: list[str]) -> str:
    return yaml.safe_dump({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                           "metadata": {"name": "to-owned", "namespace": "own"},
                           "spec": {"endpointSelector": {"matchLabels": {"app": "b"}},
                                    "egress": [{"toCIDR": cidrs}]}})


def restart_routed(node) -> None:
    pid = node.service_pid("routed")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = node.status()
        if st.get("healthy") and st["services"]["routed"]["pid"] not in (None, pid):
            return
        time.sleep(0.5)
    raise AssertionError("routed did not come back")


def test_cidr_policy_claims_stay_below_endpoint_and_node_entries(node):
    node.apply(docs(namespace_doc("own"), pod_doc("own", "a"), pod_doc("own", "b")))
    pod = f"{node.pod_ip('own/a')}/32"
    router = f"{node.router_ip}/32"
    before = ipcache(node)
    assert before[pod][1] == "endpoint" and before[router] == (1, "node")
    node.apply(cidr_policy([pod, router]))
    assert ipcache(node)[pod] == before[pod]
    assert ipcache(node)[router] == (1, "node")

    restart_routed(node)                       # the shadowed claims outlive routed
    assert ipcache(node)[pod] == before[pod]
    node.cli("delete", "pod", "own/a")
    identity, source = ipcache(node)[pod]
    assert source == "cidr-policy" and identity != before[pod][0]

    node.cli("delete", "cnp", "to-owned", "-n", "own")
    after = ipcache(node)
    assert pod not in after and after[router] == (1, "node")
    node.cli("delete", "pod", "own/b")
