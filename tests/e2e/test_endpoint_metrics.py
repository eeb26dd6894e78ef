"""Per-endpoint packet counters (cap_ep_metrics): counted by the datapath for every packet a
pod sends and every packet delivered to it, exported by flowd with the pod's name, and gone
with the pod. And the Grafana dashboard shipped in examples/ asks only for metrics a node
exports."""
from __future__ import annotations

import json
import re
from pathlib import Path

from services.datapath.maps.metrics import EndpointMetricsMap
from tests.support.node import REPO, docs, namespace_doc, pod_doc
from tests.support.traffic import ping

PINGS = 5


def series(metrics: str, pod: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(r'capillary_endpoint_packets_total\{direction="(\w+)",endpoint="\d+",namespace="epm",'
                         rf'pod="{pod}"\}} (\S+)', metrics):
        out[m.group(1)] = float(m.group(2))
    return out


def test_every_packet_in_and_out_of_a_pod_is_counted(node):
    node.apply(docs(namespace_doc("epm"), pod_doc("epm", "a"), pod_doc("epm", "b")))
    try:
        assert ping(node.netns("epm/a"), node.pod_ip("epm/b"), count=PINGS)
        metrics = node.metrics("flowd")
        # echo requests out of a and into b; replies out of b and into a
        assert series(metrics, "a") == {"ingress": PINGS, "egress": PINGS}
        assert series(metrics, "b") == {"ingress": PINGS, "egress": PINGS}
        assert re.search(r"capillary_flow_export_delay_seconds_count [1-9]", metrics)
        b_id = node.pods()["epm/b"]["status"]["endpointID"]
    finally:
        node.cli("delete", "namespace", "epm")
    assert series(node.metrics("flowd"), "b") == {}
    assert b_id not in {c.endpoint_id for c in EndpointMetricsMap(Path(node.bpf_root)).all()}


def test_the_grafana_dashboard_uses_only_metrics_the_node_exports(node):
    dashboard = json.loads((REPO / "examples" / "grafana" / "capillary-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    used = {family(name) for expr in exprs for name in re.findall(r"\b(?:hubble|cilium|capillary)_[a-z_]+", expr)}
    exported = {family(m.group(1)) for service in ("endpointd", "policyd", "routed", "flowd")
                for m in re.finditer(r"^# TYPE (\S+) ", node.metrics(service), re.M)}
    assert len(used) >= 12 and used <= exported, sorted(used - exported)
