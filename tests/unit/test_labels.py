"""Identity labels, as Cilium derives them for a pod."""
from __future__ import annotations

from services.wire.labels import identity_labels, namespace_labels


def test_namespace_labels_add_the_metadata_name():
    assert namespace_labels("shop", {"team": "a"}) == {"team": "a", "kubernetes.io/metadata.name": "shop"}


def test_namespace_labels_cannot_be_told_another_name():
    labels = namespace_labels("shop", {"kubernetes.io/metadata.name": "bank"})
    assert labels["kubernetes.io/metadata.name"] == "shop"


def test_namespace_labels_leave_the_argument_alone():
    given = {"team": "a"}
    namespace_labels("shop", given)
    assert given == {"team": "a"}


def test_identity_labels_prefix_pod_namespace_and_namespace_labels():
    labels = identity_labels({"app": "web"}, "shop", namespace_labels("shop", {"team": "a"}))
    assert labels == {
        "k8s:app": "web",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "shop",
        "k8s:io.cilium.k8s.namespace.labels.team": "a",
        "k8s:io.kubernetes.pod.namespace": "shop",
    }


def test_identity_labels_are_sorted():
    labels = identity_labels({"zz": "1", "aa": "2"}, "shop", {"m": "3"})
    assert list(labels) == sorted(labels)


def test_same_pod_labels_in_different_namespaces_differ():
    assert identity_labels({"app": "web"}, "a", {}) != identity_labels({"app": "web"}, "b", {})


def test_a_pod_label_cannot_override_the_namespace():
    labels = identity_labels({"io.kubernetes.pod.namespace": "bank"}, "shop", {})
    assert labels == {"k8s:io.kubernetes.pod.namespace": "shop"}
