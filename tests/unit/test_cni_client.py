"""The plugin builds its requests by hand (services.cni.client): each must equal what its
message class sends, and parse back through it, so the two cannot drift apart."""
from __future__ import annotations

from services.cni import client
from services.wire import messages
from services.wire.messages import Apply, ListRequest, ObjectRef

DOC = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "b", "labels": {}},
       "spec": {"netns": "/run/netns/x", "interface": "eth0", "attachment": "cni/n/c/eth0"}}


def test_requests_are_what_the_message_classes_send():
    assert client.SCHEMA_VERSION == messages.SCHEMA_VERSION
    assert client.list_request() == ListRequest().to_wire()
    assert client.list_request("ns") == ListRequest("ns").to_wire()
    assert client.apply(DOC) == Apply(DOC).to_wire()
    assert client.ref("a", "b") == ObjectRef("a", "b").to_wire()
    assert client.ref("ns") == ObjectRef("ns").to_wire()
    assert ObjectRef.from_wire(client.ref("a", "b")) == ObjectRef("a", "b")
    assert Apply.from_wire(client.apply(DOC)) == Apply(DOC)
