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


def test_the_add_reads_what_a_pod_apply_reply_holds():
    """ADD takes the pod and the gateway from endpointd's reply to pod.apply."""
    status = messages.PodStatus(pod_ip="10.0.0.2", host_ifname="lxc1", host_ifindex=7, host_mac="aa:aa:aa:aa:aa:aa",
                                pod_mac="bb:bb:bb:bb:bb:bb", netns="/run/netns/x", netns_owned=False,
                                endpoint_id=1, identity=256, created=1.0)
    pod = messages.Pod(messages.PodSpec(name="a", namespace="b", netns="/run/netns/x", attachment="cni/n/c/eth0"),
                       status)
    reply = messages.PodApplied("Pod", "a", "b", "created", pod, "10.0.0.1").to_wire()
    assert reply["gateway"] == "10.0.0.1"
    assert reply["pod"]["status"]["pod_mac"] == "bb:bb:bb:bb:bb:bb"
    assert reply["pod"]["spec"]["attachment"] == "cni/n/c/eth0"
