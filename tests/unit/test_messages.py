"""Wire schemas and the msgpack codec: every message survives the bus, bad payloads name the field."""
from __future__ import annotations

import dataclasses
import inspect

import msgpack
import pytest

from services.wire import messages as m
from services.wire.codec import DecodeError, decode, encode

SPEC = m.PodSpec(name="web", namespace="shop", labels={"app": "web"}, netns="/run/netns/web")
STATUS = m.PodStatus(pod_ip="10.200.0.2", host_ifname="lxc1a2b", host_ifindex=17,
                     host_mac="02:00:00:00:00:01", pod_mac="02:00:00:00:00:02",
                     netns="/run/netns/web", netns_owned=False, endpoint_id=3,
                     identity=256, created=1700000000.5)
POD = m.Pod(spec=SPEC, status=STATUS)

SAMPLES = [
    m.ErrorBody(code=m.NOT_FOUND, message="pod shop/web not found"),
    m.NamespaceSpec(name="shop", labels={"team": "a"}),
    SPEC,
    m.PodSpec(name="db", namespace="default"),
    m.PodSpec(name="c1", namespace="default", netns="/run/netns/c1", interface="net1",
              attachment="cni/capnet/abc/net1", mtu=1400),
    m.PodCheck(pod="default/c1", problems=["interface net1 is missing in /run/netns/c1"]),
    STATUS,
    POD,
    m.Apply(document={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}, create_only=True),
    m.Applied(kind="Pod", name="web", namespace="shop", action="created", warnings=["w1", "w2"]),
    m.PodApplied(kind="Pod", name="web", namespace="shop", action="created", pod=POD, gateway="10.200.0.1"),
    m.ObjectRef(name="web", namespace="shop"),
    m.ObjectRef(name="allow-https", namespace="shop", object_kind="CiliumNetworkPolicy"),
    m.EndpointPolicy(endpoint_id=3, identity=256),
    m.PolicyApplied(kind="NetworkPolicy", name="deny", namespace="x", action="created", revision=4,
                    warnings=["w"], entries_written=2, entries_removed=1),
    m.ListRequest(namespace="shop"),
    m.PolicyRule(rule_id=77, kind="CiliumNetworkPolicy", name="p", namespace="x", direction="ingress",
                 deny=True, index=1),
    m.EndpointEvent(pod=POD),
    m.PolicyPreviewRequest(document={"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy"}),
    m.PreviewVerdict(verdict="denied", reason="default-deny: ingress policy shop/db-only selects shop/db"),
    m.PreviewCell(source="shop/web", destination="shop/db", protocol="TCP", port=5432,
                  before=m.PreviewVerdict("allowed", "default-allow"),
                  after=m.PreviewVerdict("allowed", "policy shop/db-only ingress[0]")),
    m.PolicyPreview(kind="CiliumNetworkPolicy", name="db-only", namespace="shop", action="created",
                    affected=["shop/db"], ports=["TCP/5432", "ICMP/8"], cells=[], warnings=["w"]),
    m.IdentityAllocate(labels={"k8s:app": "web"}, owner="pod:shop/web"),
    m.IdentityRelease(identity=256, owner="pod:shop/web"),
    m.Identity(id=256, labels={"k8s:app": "web"}, owners=["pod:shop/web"]),
    m.IpcacheUpsert(cidr="10.200.0.2/32", identity=256, source="endpoint"),
    m.IpcacheDelete(cidr="10.200.0.2/32", source="endpoint"),
    m.IpcacheEntry(cidr="10.200.0.2/32", identity=256, source="endpoint"),
    m.IpcacheBatch(source="cidr-policy", cidrs=["192.0.2.0/24"], identities=[16777216], released=["192.0.2.1/32"]),
    m.IpcacheBatchDone(claimed=1, released=1, entries=9, capacity=65536),
    m.Health(service="routed", pid=42, started=1.0, ready=True, detail="ok",
             metrics_port=9964, counters={"requests": 3}),
    m.FlowFilter(verdict=["DROPPED"], pod=["x/a"], port=[80], since=1700000000.0),
    m.FlowQuery(last=20, filter=m.FlowFilter(protocol=["tcp"], type=["policy-verdict"])),
    m.MonitorAttach(monitor="cli-1", lease=10.0),
    m.MonitorEvents(events=[b"\x00" * 48], lost=3),
    m.FlowEvent(flow={"verdict": "DROPPED", "IP": {"source": "10.0.0.1"}, "l4": {"TCP": {"source_port": 1}}}),
]


def test_every_message_class_has_a_sample():
    classes = {cls for _, cls in inspect.getmembers(m, inspect.isclass)
               if issubclass(cls, m.Message) and cls is not m.Message}
    assert classes == {type(s) for s in SAMPLES}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_through_the_codec(msg):
    assert type(msg).from_wire(decode(encode(msg.to_wire()))) == msg


@pytest.mark.parametrize("msg", [s for s in SAMPLES if s.KIND], ids=lambda s: type(s).__name__)
def test_requests_and_events_carry_version_and_kind(msg):
    wire = msg.to_wire()
    assert wire["v"] == m.SCHEMA_VERSION
    assert wire["kind"] == msg.KIND


def test_nested_messages_become_plain_maps():
    wire = m.EndpointEvent(pod=POD).to_wire()
    assert wire["pod"]["spec"] == {"name": "web", "namespace": "shop",
                                   "labels": {"app": "web"}, "netns": "/run/netns/web", "audit": False,
                                   "interface": "eth0", "attachment": "", "mtu": 0, "node_name": ""}
    assert "kind" not in wire["pod"]


def test_defaults_fill_missing_optional_fields():
    assert m.PodSpec.from_wire({"name": "a", "namespace": "b"}) == m.PodSpec(name="a", namespace="b")


def test_an_int_is_accepted_for_a_float():
    data = {**STATUS.to_wire(), "created": 5}
    created = m.PodStatus.from_wire(data).created
    assert created == 5.0 and isinstance(created, float)


def test_none_is_accepted_for_an_optional_field_only():
    assert m.PodSpec.from_wire({"name": "a", "namespace": "b", "netns": None}).netns is None
    with pytest.raises(m.SchemaError, match=r"^namespace: expected str, got NoneType"):
        m.PodSpec.from_wire({"name": "a", "namespace": None})


def wire_with(msg: m.Message, **changes) -> dict:
    return {**msg.to_wire(), **changes}


@pytest.mark.parametrize("cls, data, path", [
    (m.PodSpec, {"name": "a", "namespace": "b", "colour": "red"}, "colour: unknown field"),
    (m.Pod, {"spec": {**SPEC.to_wire(), "x": 1}, "status": STATUS.to_wire()}, "spec.x: unknown field"),
    (m.PodSpec, {"name": "a"}, "namespace: required field is missing"),
    (m.Pod, {"spec": SPEC.to_wire(), "status": {k: v for k, v in STATUS.to_wire().items() if k != "pod_ip"}},
     "status.pod_ip: required field is missing"),
    (m.PodStatus, {**STATUS.to_wire(), "host_ifindex": "17"}, "host_ifindex: expected int, got str"),
    (m.PodStatus, {**STATUS.to_wire(), "host_ifindex": True}, "host_ifindex: expected int, got bool"),
    (m.PodStatus, {**STATUS.to_wire(), "netns_owned": 1}, "netns_owned: expected bool, got int"),
    (m.PodSpec, {"name": "a", "namespace": "b", "labels": ["app"]}, "labels: expected a map, got list"),
    (m.PodSpec, {"name": "a", "namespace": "b", "labels": {"app": 1}}, "labels.app: expected str, got int"),
    (m.Applied, {"kind": "Pod", "name": "a", "namespace": "b", "action": "created", "warnings": ["ok", 2]},
     r"warnings\[1\]: expected str, got int"),
    (m.Pod, {"spec": "web", "status": STATUS.to_wire()}, "spec: expected a map, got str"),
    (m.EndpointEvent, wire_with(m.EndpointEvent(pod=POD), pod={"spec": SPEC.to_wire(),
                                                               "status": {**STATUS.to_wire(), "identity": "x"}}),
     "pod.status.identity: expected int, got str"),
    (m.IpcacheUpsert, wire_with(m.IpcacheUpsert(cidr="a", identity=1, source="s"), v=2), "v: unsupported schema version 2"),
    (m.IpcacheUpsert, {"kind": "ipcache.upsert", "cidr": "a", "identity": 1, "source": "s"}, "v: unsupported"),
    (m.IpcacheUpsert, wire_with(m.IpcacheUpsert(cidr="a", identity=1, source="s"), v=0), "v: unsupported"),
    (m.IpcacheUpsert, wire_with(m.IpcacheUpsert(cidr="a", identity=1, source="s"), v=True), "v: unsupported"),
    (m.IpcacheUpsert, wire_with(m.IpcacheDelete(cidr="a", source="s"), identity=1),
     "kind: expected 'ipcache.upsert', got 'ipcache.delete'"),
    (m.IpcacheUpsert, {"v": 1, "cidr": "a", "identity": 1, "source": "s"}, "kind: expected"),
])
def test_schema_errors_name_the_field(cls, data, path):
    with pytest.raises(m.SchemaError, match="^" + path):
        cls.from_wire(data)


def test_top_level_payload_must_be_a_map():
    with pytest.raises(m.SchemaError, match="^PodSpec: expected a map, got list"):
        m.PodSpec.from_wire(["web"])


def test_from_wire_leaves_the_callers_payload_alone():
    data = m.ListRequest(namespace="a").to_wire()
    m.ListRequest.from_wire(data)
    assert data == {"v": 1, "kind": "list", "namespace": "a"}


def test_messages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.name = "other"


def test_ok_reply_shape():
    assert m.ok_reply() == {"v": 1, "ok": True, "result": None}
    assert m.ok_reply([m.IpcacheEntry(cidr="10.0.0.0/8", identity=2, source="node")]) == {
        "v": 1, "ok": True,
        "result": [{"cidr": "10.0.0.0/8", "identity": 2, "source": "node", "tunnel_endpoint": ""}],
    }


def test_error_reply_shape_matches_error_body():
    reply = m.error_reply(m.EXHAUSTED, "pod CIDR 10.200.0.0/29 is exhausted")
    assert reply == {"v": 1, "ok": False,
                     "error": {"code": "exhausted", "message": "pod CIDR 10.200.0.0/29 is exhausted"}}
    assert m.ErrorBody.from_wire(decode(encode(reply))["error"]).code == m.EXHAUSTED


def test_encode_keeps_bytes_and_str_apart():
    assert decode(encode({"s": "x", "b": b"x"})) == {"s": "x", "b": b"x"}


@pytest.mark.parametrize("payload, message", [
    (b"", "not valid msgpack"),
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({"a": 1}) + b"\x01", "not valid msgpack"),
    (msgpack.packb([1, 2]), "must be a msgpack map, got list"),
    (msgpack.packb("hello"), "must be a msgpack map, got str"),
])
def test_decode_rejects_what_is_not_a_msgpack_map(payload, message):
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_a_class_schema_is_worked_out_once(monkeypatch):
    # get_type_hints re-evaluates every annotation on each call: decoding must not call it
    # per message (a list of 500 pods is 1,500 messages).
    m.Pod.from_wire(POD.to_wire())
    calls = []
    real = m.typing.get_type_hints
    monkeypatch.setattr(m.typing, "get_type_hints", lambda cls: calls.append(cls) or real(cls))
    for _ in range(3):
        assert m.Pod.from_wire(POD.to_wire()) == POD
    assert calls == []
