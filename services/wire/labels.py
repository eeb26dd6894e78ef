"""Security-identity labels, as Cilium derives them for a pod."""
from __future__ import annotations

SOURCE = "k8s"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
NAMESPACE_LABEL_PREFIX = "io.cilium.k8s.namespace.labels."
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# On a policy: its would-be drops pass as AUDIT. On a pod: all of that endpoint's do.
AUDIT_ANNOTATION = "policy.capillary.io/audit"


def namespace_labels(name: str, labels: dict[str, str]) -> dict[str, str]:
    """A namespace's labels, with kubernetes.io/metadata.name set as Kubernetes does."""
    return {**labels, NAMESPACE_NAME_LABEL: name}


def identity_labels(pod_labels: dict[str, str], namespace: str,
                    ns_labels: dict[str, str]) -> dict[str, str]:
    """The label set that names a pod's identity: its labels, its namespace and the
    namespace's labels, each with the k8s: source prefix."""
    out = {f"{SOURCE}:{k}": v for k, v in pod_labels.items()}
    out[f"{SOURCE}:{POD_NAMESPACE}"] = namespace
    for k, v in ns_labels.items():
        out[f"{SOURCE}:{NAMESPACE_LABEL_PREFIX}{k}"] = v
    return dict(sorted(out.items()))
