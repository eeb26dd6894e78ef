"""policyd's metrics under Cilium's agent names, beside its own capillary_* ones:
cilium_policy (policies in force), cilium_identity{type} (reserved, cluster_local for pods,
node_local for CIDRs), cilium_policy_implementation_delay{source} (from a policy apply or
delete request to its entries written), and the policy map's pressure, capacity and ops."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram

from services.datapath.map_metrics import MapOpsCollector, MapPressureCollector
from services.datapath.maps.policy import PIN_NAME
from services.policyd.identity import FIRST_LOCAL, RESERVED
from services.policyd.parse import NETWORK_POLICY
from services.runtime.metrics import ScrapeGauges

if TYPE_CHECKING:
    from services.policyd.service import PolicyService

DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def source(kind: str) -> str:
    """Cilium's policy source label: Kubernetes NetworkPolicy, or a Cilium custom resource."""
    return "k8s" if kind == NETWORK_POLICY else "custom-resource"


def identity_types(ids: list[int]) -> dict[tuple, float]:
    out = {("reserved",): float(len(RESERVED)), ("cluster_local",): 0.0, ("node_local",): 0.0}
    for i in ids:
        out[("node_local" if i >= FIRST_LOCAL else "cluster_local",)] += 1
    return out


def register(service: "PolicyService", registry: CollectorRegistry,
             entries: Callable[[], int]) -> Histogram:
    """Register the collectors; returns the implementation-delay histogram to observe."""
    registry.register(MapOpsCollector())
    registry.register(MapPressureCollector({PIN_NAME: (entries, service.config.maps.policy)}))
    registry.register(ScrapeGauges([
        ("cilium_policy", "Number of policies currently loaded", [], lambda: {(): len(service.policies)}),
        ("cilium_identity", "Number of identities currently allocated", ["type"],
         lambda: identity_types(list(service.identities.by_id))),
    ]))
    return Histogram("cilium_policy_implementation_delay", "Time between a policy change and it being "
                     "fully deployed into the datapath", ["source"], buckets=DELAY_BUCKETS, registry=registry)
