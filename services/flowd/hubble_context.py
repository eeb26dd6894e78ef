"""The label values Hubble's context options take from a flow (see
services.wire.hubble_options): sourceContext / destinationContext (the first non-empty of
their contexts) and labelsContext. Pure logic.

capillary's pods belong to no workload (Deployment, StatefulSet, ...): ``workload`` and
``workload-name`` are empty, as Hubble gives them for a bare pod, unless the flow names
workloads (Hubble's ``workloads`` field).
"""
from __future__ import annotations

from services.wire.hubble_options import MetricSpec

APP_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app=")


def _app(endpoint: dict) -> str:
    for prefix in APP_LABELS:
        for label in endpoint.get("labels", ()):
            if label.startswith(prefix):
                return label[len(prefix):]
    return ""


def _workload(endpoint: dict) -> dict:
    workloads = endpoint.get("workloads") or [{}]
    return workloads[0]


def _context(flow: dict, side: str, context: str) -> str:
    endpoint = flow.get(side) or {}
    namespace, pod = endpoint.get("namespace", ""), endpoint.get("pod_name", "")
    if context == "namespace":
        return namespace
    if context == "pod":
        return f"{namespace}/{pod}" if pod else ""
    if context == "pod-name":
        return pod
    if context in ("workload", "workload-name"):
        name = _workload(endpoint).get("name", "")
        return f"{namespace}/{name}" if name and context == "workload" else name
    if context == "app":
        return _app(endpoint)
    if context == "identity":
        return ",".join(endpoint.get("labels", ()))
    if context == "ip":
        return (flow.get("IP") or {}).get(side, "")
    reserved = [lbl for lbl in endpoint.get("labels", ()) if lbl.startswith("reserved:")]
    return "reserved:kube-apiserver" if "reserved:kube-apiserver" in reserved else (reserved or [""])[0]


def _label(flow: dict, name: str) -> str:
    if name == "traffic_direction":
        return flow.get("traffic_direction", "unknown").lower()
    side, _, what = name.partition("_")
    endpoint = flow.get(side) or {}
    if what == "ip":
        return (flow.get("IP") or {}).get(side, "")
    if what == "namespace":
        return endpoint.get("namespace", "")
    if what == "pod":
        return endpoint.get("pod_name", "")
    if what == "workload":
        return _workload(endpoint).get("name", "")
    if what == "workload_kind":
        return _workload(endpoint).get("kind", "")
    return _app(endpoint)


def context_values(spec: MetricSpec, flow: dict) -> tuple[str, ...]:
    """The values of SPEC.context_labels for FLOW, in that order."""
    out = []
    for side, contexts in (("source", spec.source_context), ("destination", spec.destination_context)):
        if contexts:
            out.append(next((v for v in (_context(flow, side, c) for c in contexts) if v), ""))
    out += [_label(flow, name) for name in spec.labels_context]
    return tuple(out)
