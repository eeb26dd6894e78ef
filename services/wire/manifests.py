"""Kubernetes-style documents (YAML or JSON, one or many) -> typed specs.

Errors name the document and the field path, e.g.
``Pod x/a: metadata.labels.app: value "a b" is not a valid label value``.
Policy kinds are parsed by services.policyd; this module routes them by kind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from services.wire.labels import AUDIT_ANNOTATION
from services.wire.limits import LimitError, load_json, load_yaml_all
from services.wire.messages import NamespaceSpec, PodSpec
from services.wire.names import (DNS_LABEL, DNS_SUBDOMAIN, LABEL_NAME, LABEL_VALUE, MAX_MTU,  # noqa: F401
                                 MIN_MTU, valid_ifname, valid_label_key)

DEFAULT_NAMESPACE = "default"
MAX_ATTACHMENT = 256

# (apiVersion, kind) -> the service that owns objects of that kind
POD_KINDS = {("v1", "Namespace"), ("v1", "Pod")}


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Document:
    api_version: str
    kind: str
    body: dict

    @property
    def label(self) -> str:
        meta = self.body.get("metadata") if isinstance(self.body.get("metadata"), dict) else {}
        name = meta.get("name", "?")
        ns = meta.get("namespace")
        return f"{self.kind} {ns}/{name}" if ns else f"{self.kind} {name}"


def load_documents(text: str) -> list[Document]:
    """Every document in TEXT (YAML stream or JSON; `kind: List` is unpacked), within the
    bounds of services.wire.limits (YAML aliases are refused)."""
    try:
        raw = _load(text)
    except LimitError as exc:
        raise ManifestError(str(exc)) from None
    docs: list[Document] = []
    for i, item in enumerate(raw):
        if item is None:
            continue
        items = item if isinstance(item, list) else (item.get("items") if isinstance(item, dict) and item.get("kind") == "List" else [item])
        if not isinstance(items, list):
            raise ManifestError(f"document {i}: List.items must be a list")
        for obj in items:
            docs.append(_document(obj, f"document {i}"))
    if not docs:
        raise ManifestError("no documents found")
    return docs


def _load(text: str) -> list[Any]:
    try:
        return [load_json(text, "manifest")]
    except LimitError:
        raise
    except ValueError:
        pass
    try:
        return load_yaml_all(text, "manifest")   # YAML, which also reads JSON-style documents
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML or JSON: {_one_line(exc)}") from None


def _document(obj: Any, where: str) -> Document:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(obj).__name__}")
    api, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(f"{where}: kind: required field is missing")
    if not isinstance(api, str) or not api:
        raise ManifestError(f"{where}: apiVersion: required field is missing")
    return Document(api, kind, obj)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _fields(obj: Any, path: str, allowed: set[str], where: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: {path}: expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise ManifestError(f"{where}: {path}.{key}: unknown field" if path else f"{where}: {key}: unknown field")
    return obj


def check_labels(labels: Any, path: str, where: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ManifestError(f"{where}: {path}: expected a mapping of strings")
    out = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not valid_label_key(key):
            raise ManifestError(f"{where}: {path}: {key!r} is not a valid label key")
        if not isinstance(value, str):
            # Kubernetes refuses these too: YAML turns 1.10 into the number 1.1, true into a bool.
            raise ManifestError(f"{where}: {path}.{key}: value must be a string (quote it)")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise ManifestError(f"{where}: {path}.{key}: {value!r} is not a valid label value")
        out[key] = value
    return out


def _name(meta: dict, where: str, pattern: re.Pattern, what: str) -> str:
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name: required field is missing")
    if len(name) > 63 or not pattern.match(name):
        raise ManifestError(f"{where}: metadata.name: {name!r} is not a valid {what}")
    return name


def _header(doc: Document, api: str) -> str:
    where = doc.label
    if doc.api_version != api:
        raise ManifestError(f"{where}: apiVersion: {doc.api_version!r} is not supported for {doc.kind} (use {api})")
    _fields(doc.body, "", {"apiVersion", "kind", "metadata", "spec", "status"}, where)
    return where


def parse_namespace(doc: Document) -> NamespaceSpec:
    where = _header(doc, "v1")
    meta = _fields(doc.body.get("metadata"), "metadata", {"name", "labels", "annotations"}, where)
    name = _name(meta, where, DNS_LABEL, "namespace name (a DNS label)")
    _fields(doc.body.get("spec"), "spec", {"finalizers"}, where)
    return NamespaceSpec(name=name, labels=check_labels(meta.get("labels"), "metadata.labels", where))


def parse_pod(doc: Document) -> PodSpec:
    where = _header(doc, "v1")
    meta = _fields(doc.body.get("metadata"), "metadata", {"name", "namespace", "labels", "annotations"}, where)
    name = _name(meta, where, DNS_LABEL, "pod name (a DNS label)")
    namespace = meta.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise ManifestError(f"{where}: metadata.namespace: {namespace!r} is not a valid namespace name")
    spec = _fields(doc.body.get("spec"), "spec", {"netns", "interface", "attachment", "mtu", "nodeName"}, where)
    node_name = spec.get("nodeName", "")
    if not isinstance(node_name, str) or (node_name and (not DNS_LABEL.match(node_name) or len(node_name) > 63)):
        raise ManifestError(f"{where}: spec.nodeName: {node_name!r} is not a node name (a DNS label)")
    netns = spec.get("netns")
    if netns is not None and (not isinstance(netns, str) or not netns.startswith("/")):
        raise ManifestError(f"{where}: spec.netns: {netns!r} must be an absolute path "
                            "such as /proc/PID/ns/net or /run/netns/NAME")
    attach = _attachment_fields(spec, where)
    labels = check_labels(meta.get("labels"), "metadata.labels", where)
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{where}: metadata.annotations: expected a mapping of strings")
    audit = annotations.get(AUDIT_ANNOTATION, "false")
    if audit not in ("true", "false"):
        raise ManifestError(f'{where}: metadata.annotations.{AUDIT_ANNOTATION}: {audit!r} must be "true" or "false"')
    return PodSpec(name=name, namespace=namespace, labels=labels, netns=netns, audit=audit == "true",
                   node_name=node_name, **attach)


def _attachment_fields(spec: dict, where: str) -> dict:
    """spec.interface, spec.attachment and spec.mtu: how a container runtime wires the pod."""
    out: dict = {}
    if "interface" in spec:
        ifname = spec["interface"]
        if not isinstance(ifname, str) or not valid_ifname(ifname):
            raise ManifestError(f"{where}: spec.interface: {ifname!r} is not a valid interface name "
                                "(1-15 characters, no '/', ':' or spaces)")
        out["interface"] = ifname
    if "attachment" in spec:
        handle = spec["attachment"]
        if not isinstance(handle, str) or not 0 < len(handle) <= MAX_ATTACHMENT or not handle.isprintable():
            raise ManifestError(f"{where}: spec.attachment: must be a printable string of 1-{MAX_ATTACHMENT} "
                                "characters")
        out["attachment"] = handle
    if "mtu" in spec:
        mtu = spec["mtu"]
        if type(mtu) is not int or not MIN_MTU <= mtu <= MAX_MTU:
            raise ManifestError(f"{where}: spec.mtu: {mtu!r} must be an integer from {MIN_MTU} to {MAX_MTU}")
        out["mtu"] = mtu
    return out


def document_from_spec(spec: NamespaceSpec | PodSpec) -> dict:
    """The Kubernetes-style document for SPEC (for `get -o yaml` and delete -f round trips)."""
    if isinstance(spec, NamespaceSpec):
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": spec.name, "labels": dict(spec.labels)}}
    doc: dict = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)}}
    if spec.audit:
        doc["metadata"]["annotations"] = {AUDIT_ANNOTATION: "true"}
    body = {"netns": spec.netns, "interface": spec.interface if spec.interface != "eth0" else None,
            "attachment": spec.attachment or None, "mtu": spec.mtu or None, "nodeName": spec.node_name or None}
    if any(v is not None for v in body.values()):
        doc["spec"] = {k: v for k, v in body.items() if v is not None}
    return doc
