"""Kubernetes-style documents -> NamespaceSpec / PodSpec; errors name the document and the field."""
from __future__ import annotations

import json

import pytest

from services.wire.manifests import (DEFAULT_NAMESPACE, Document, ManifestError, document_from_spec,
                                     load_documents, parse_namespace, parse_pod, valid_label_key)
from services.wire.messages import NamespaceSpec, PodSpec


def pod(**overrides) -> dict:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"}}
    doc.update(overrides)
    return doc


def parse_one(doc: dict):
    (d,) = load_documents(json.dumps(doc))
    return parse_pod(d) if d.kind == "Pod" else parse_namespace(d)


# ---- loading -------------------------------------------------------------------------------

def test_yaml_stream_skips_empty_documents():
    text = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
"""
    docs = load_documents(text)
    assert [(d.kind, d.body["metadata"]["name"]) for d in docs] == [("Namespace", "shop"), ("Pod", "web")]


def test_json_object_and_json_array():
    assert [d.kind for d in load_documents(json.dumps(pod()))] == ["Pod"]
    both = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}, pod()]
    assert [d.kind for d in load_documents(json.dumps(both))] == ["Namespace", "Pod"]


@pytest.mark.parametrize("text", [
    json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod(), pod(metadata={"name": "db"})]}),
    "apiVersion: v1\nkind: List\nitems:\n- " + json.dumps(pod()) + "\n- " + json.dumps(pod(metadata={"name": "db"})),
])
def test_kind_list_is_unpacked(text):
    docs = load_documents(text)
    assert [d.body["metadata"]["name"] for d in docs] == ["web", "db"]


@pytest.mark.parametrize("text, message", [
    ("", "no documents found"),
    ("---\n---\n", "no documents found"),
    ("{not json", "not valid YAML or JSON"),
    ("a: [1, 2", "not valid YAML or JSON"),
    ("kind: List\napiVersion: v1\nitems: 3", "document 0: List.items must be a list"),
    ("- just a string", "document 0: expected a mapping, got str"),
    ("apiVersion: v1\nmetadata: {name: a}", "document 0: kind: required field is missing"),
    ("kind: Pod\nmetadata: {name: a}", "document 0: apiVersion: required field is missing"),
    ("kind: Namespace\napiVersion: v1\n---\nkind: Pod\n", "document 1: apiVersion: required field is missing"),
])
def test_load_errors_name_the_document(text, message):
    with pytest.raises(ManifestError, match="^" + message):
        load_documents(text)


def test_document_label_names_kind_namespace_and_name():
    assert Document("v1", "Pod", pod()).label == "Pod shop/web"
    assert Document("v1", "Namespace", {"metadata": {"name": "shop"}}).label == "Namespace shop"
    assert Document("v1", "Pod", {"metadata": "junk"}).label == "Pod ?"


# ---- namespaces and pods -------------------------------------------------------------------

def test_namespace_with_labels():
    spec = parse_one({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "shop", "labels": {"team": "a", "example.com/tier": "1"}}})
    assert spec == NamespaceSpec(name="shop", labels={"team": "a", "example.com/tier": "1"})


def test_pod_defaults_to_the_default_namespace():
    spec = parse_one(pod(metadata={"name": "web"}))
    assert spec == PodSpec(name="web", namespace=DEFAULT_NAMESPACE, labels={}, netns=None)
    assert DEFAULT_NAMESPACE == "default"


def test_pod_with_labels_and_netns():
    spec = parse_one(pod(metadata={"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                         spec={"netns": "/proc/123/ns/net"}))
    assert spec == PodSpec(name="web", namespace="shop", labels={"app": "web"}, netns="/proc/123/ns/net")


@pytest.mark.parametrize("value", [3, 1.1, True, None])
def test_label_values_must_be_strings(value):
    with pytest.raises(ManifestError, match=r"metadata\.labels\.v: value must be a string"):
        parse_one(pod(metadata={"name": "web", "labels": {"v": value}}))


@pytest.mark.parametrize("spec", [
    NamespaceSpec(name="shop", labels={"team": "a"}),
    PodSpec(name="web", namespace="shop", labels={"app": "web"}),
    PodSpec(name="web", namespace="shop", labels={}, netns="/run/netns/web"),
])
def test_document_from_spec_round_trips(spec):
    assert parse_one(document_from_spec(spec)) == spec


LONG = "a" * 64


@pytest.mark.parametrize("doc, message", [
    (pod(apiVersion="apps/v1"), "Pod shop/web: apiVersion: 'apps/v1' is not supported for Pod (use v1)"),
    (pod(extra=1), "Pod shop/web: extra: unknown field"),
    (pod(metadata={"name": "web", "uid": "x"}), "Pod web: metadata.uid: unknown field"),
    (pod(spec={"containers": []}), "Pod shop/web: spec.containers: unknown field"),
    (pod(metadata="web"), "Pod ?: metadata: expected a mapping, got str"),
    (pod(metadata={"namespace": "shop"}), "Pod shop/?: metadata.name: required field is missing"),
    (pod(metadata={"name": "Web"}), "Pod Web: metadata.name: 'Web' is not a valid pod name"),
    (pod(metadata={"name": "web_1"}), "Pod web_1: metadata.name: 'web_1' is not a valid pod name"),
    (pod(metadata={"name": "-web"}), "Pod -web: metadata.name: '-web' is not a valid pod name"),
    (pod(metadata={"name": LONG}), f"Pod {LONG}: metadata.name: '{LONG}' is not a valid pod name"),
    (pod(metadata={"name": "web", "namespace": "Shop"}),
     "Pod Shop/web: metadata.namespace: 'Shop' is not a valid namespace name"),
    (pod(metadata={"name": "web", "namespace": 5}), "Pod 5/web: metadata.namespace: 5 is not a valid namespace name"),
    (pod(spec={"netns": "run/netns/web"}), "Pod shop/web: spec.netns: 'run/netns/web' must be an absolute path"),
    (pod(spec={"netns": 7}), "Pod shop/web: spec.netns: 7 must be an absolute path"),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "namespace": "x"}},
     "Namespace x/shop: metadata.namespace: unknown field"),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}},
     "Namespace a.b: metadata.name: 'a.b' is not a valid namespace name"),
    ({"apiVersion": "v2", "kind": "Namespace", "metadata": {"name": "a"}},
     "Namespace a: apiVersion: 'v2' is not supported for Namespace (use v1)"),
])
def test_errors_name_the_document_and_field(doc, message):
    with pytest.raises(ManifestError) as err:
        parse_one(doc)
    assert str(err.value).startswith(message)


def test_a_63_character_name_is_valid():
    assert parse_one(pod(metadata={"name": "a" * 63})).name == "a" * 63


# ---- labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["app", "App_1.x-y", "a" * 63, "example.com/app", "a.b-c.d/x", "k8s.io/n"])
def test_valid_label_keys(key):
    assert valid_label_key(key)


@pytest.mark.parametrize("key", ["", "-app", "app-", "a b", "a" * 64, "/app", "Example.com/app",
                                 "a/b/c", "example.com/", "ex_ample.com/app", ("a" * 254) + "/x"])
def test_invalid_label_keys(key):
    assert not valid_label_key(key)


@pytest.mark.parametrize("labels, message", [
    ({"-app": "web"}, r"metadata.labels: '-app' is not a valid label key"),
    ({"/app": "web"}, r"metadata.labels: '/app' is not a valid label key"),
    ({"app": "a b"}, r"metadata.labels.app: 'a b' is not a valid label value"),
    ({"app": "-web"}, r"metadata.labels.app: '-web' is not a valid label value"),
    ({"app": "a" * 64}, r"metadata.labels.app: 'a{64}' is not a valid label value"),
    ({"app": True}, r"metadata.labels.app: value must be a string"),
    ({"app": None}, r"metadata.labels.app: value must be a string"),
    (["app=web"], r"metadata.labels: expected a mapping of strings"),
])
def test_label_errors_name_the_label(labels, message):
    with pytest.raises(ManifestError, match="^Pod shop/web: " + message):
        parse_one(pod(metadata={"name": "web", "namespace": "shop", "labels": labels}))


@pytest.mark.parametrize("value", ["", "a", "a" * 63, "v1.2_3-x", "A9"])
def test_valid_label_values(value):
    assert parse_one(pod(metadata={"name": "web", "labels": {"k": value}})).labels == {"k": value}


def test_a_runtime_pod_carries_its_interface_attachment_and_mtu():
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c1"},
           "spec": {"netns": "/run/netns/c1", "interface": "net1", "attachment": "cni/capnet/abc/net1",
                    "mtu": 1400}}
    spec = parse_pod(load_documents(json.dumps(doc))[0])
    assert (spec.interface, spec.attachment, spec.mtu) == ("net1", "cni/capnet/abc/net1", 1400)
    assert document_from_spec(spec)["spec"] == doc["spec"]


@pytest.mark.parametrize("field, value", [("interface", "a/b"), ("interface", "x" * 16), ("mtu", 100),
                                          ("mtu", "1400"), ("attachment", "")])
def test_bad_runtime_fields_are_named(field, value):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c1"}, "spec": {field: value}}
    with pytest.raises(ManifestError, match=f"spec.{field}:"):
        parse_pod(load_documents(json.dumps(doc))[0])
