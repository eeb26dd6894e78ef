"""Hostile input where it enters: every crash or hang the fuzzers found, kept as a regression
case. Each ends in the project's own error naming the field or the limit, never in a
RecursionError, a bare ValueError/TypeError or a truncated number."""
from __future__ import annotations

import json

import msgpack
import pytest

from services.policyd.fields import MAX_LIST
from services.policyd.parse import MAX_POLICY_TERMS, PolicyError, parse_policy
from services.runtime.config import ConfigError, parse_config
from services.wire import codec
from services.wire.limits import MAX_DEPTH, MAX_TEXT_BYTES, LimitError, check_tree, load_yaml_all
from services.wire.manifests import ManifestError, load_documents, parse_namespace, parse_pod
from services.wire.messages import (Apply, EndpointPolicy, FlowQuery, IdentityRelease,
                                    IpcacheUpsert, MonitorAttach, PodStatus, SchemaError)


def deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def exact(exc_type, fn, *args):
    """FN(*ARGS) raises exactly EXC_TYPE (a subclass of ValueError is not enough: the
    project's errors are ValueErrors, and so is a stray one)."""
    with pytest.raises(Exception) as info:
        fn(*args)
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


# ---- the bus: codec and messages ---------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"\x81\x91\x01\x01",                                   # a map keyed by a list: TypeError
    b"\x81\x81\x01\x01\x01",                               # a map keyed by a map
    b"\x81\xa1a\xc7\x01\x05a",                             # an extension type
    b"\x81\xa1a" + b"\x91" * 2000 + b"\x01",               # deeper than msgpack's own stack
    b"\x81\xa1a" + b"\x91" * (MAX_DEPTH + 1) + b"\x01",    # deeper than capillary's bound
    b"\xc1", b"", b"\x92\x01",
], ids=["list-key", "map-key", "ext", "deep-2000", "deep-65", "reserved-byte", "empty", "not-a-map"])
def test_a_malformed_payload_is_a_decode_error(payload):
    exact(codec.DecodeError, codec.decode, payload)


@pytest.mark.parametrize("cls, data, field", [
    (EndpointPolicy, {"endpoint_id": 65537}, "endpoint_id"),            # truncated to 1 before
    (EndpointPolicy, {"endpoint_id": 0}, "endpoint_id"),
    (EndpointPolicy, {"endpoint_id": 3, "identity": -1}, "identity"),
    (EndpointPolicy, {"endpoint_id": 3, "identity": 1 << 32}, "identity"),
    (IdentityRelease, {"identity": -5, "owner": "x"}, "identity"),
    (IpcacheUpsert, {"cidr": "10.0.0.0/8", "identity": 1 << 40, "source": "cidr-policy"}, "identity"),
    (FlowQuery, {"last": -1}, "last"),
    (FlowQuery, {"filter": {"port": [70000]}}, "filter.port[0]"),
    (MonitorAttach, {"monitor": "m", "lease": float("nan")}, "lease"),
    (MonitorAttach, {"monitor": "m", "lease": float("inf")}, "lease"),
    (MonitorAttach, {"monitor": "m", "lease": 10 ** 30}, "lease"),
])
def test_numbers_are_checked_against_the_field_they_fill(cls, data, field):
    payload = {"v": 1, "kind": cls.KIND, **data}
    message = exact(SchemaError, cls.from_wire, payload)
    assert message.startswith(f"{field}: ")


def test_a_pod_status_with_an_endpoint_id_over_u16_is_refused():
    status = {"pod_ip": "10.0.0.2", "host_ifname": "lxca", "host_ifindex": 7, "host_mac": "m",
              "pod_mac": "m", "netns": "/run/netns/a", "netns_owned": True, "endpoint_id": 65537,
              "identity": 300, "created": 1.0}
    assert exact(SchemaError, PodStatus.from_wire, status).startswith("endpoint_id: ")
    assert PodStatus.from_wire({**status, "endpoint_id": 65535}).endpoint_id == 65535


def test_a_deeply_nested_document_in_a_message_is_refused():
    message = exact(SchemaError, Apply.from_wire, {"v": 1, "kind": "apply", "document": {"a": deep(5000)}})
    assert "nested deeper than" in message


def test_check_tree_counts_shared_values_each_time_they_are_reached():
    shared: list = [0] * 10
    for _ in range(8):
        shared = [shared] * 10          # 10^8 values once expanded, 90 objects in memory
    exact(LimitError, check_tree, shared)


# ---- manifests (and the CLI, which reads files through load_documents) ---------------------

ANCHOR_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))


@pytest.mark.parametrize("text, words", [
    ("[" * 5000 + "]" * 5000, "nested deeper than"),             # JSON: RecursionError before
    ("- " * 3000 + "x", "nested deeper than"),                    # YAML: RecursionError before
    ("{a: " * 3000 + "1" + "}" * 3000, "nested deeper than"),
    ("a: " + "9" * 5000, "integer of 5000 characters"),          # ValueError before
    ('{"a": ' + "9" * 5000 + "}", "integer of 5000 digits"),
    (ANCHOR_BOMB, "YAML aliases (*a) are not supported"),        # seconds of work before
    ("x" * (MAX_TEXT_BYTES + 1), "over the limit"),
])
def test_hostile_manifests_are_manifest_errors(text, words):
    assert words in exact(ManifestError, load_documents, text)


@pytest.mark.parametrize("field, value", [("name", "a\n"), ("namespace", "x\n")])
def test_pod_names_with_a_trailing_newline_are_refused(field, value):
    doc = load_documents(json.dumps({"apiVersion": "v1", "kind": "Pod",
                                     "metadata": {"name": "a", "namespace": "x", field: value}}))[0]
    assert f"metadata.{field}: " in exact(ManifestError, parse_pod, doc)


def test_label_values_and_namespace_names_with_a_trailing_newline_are_refused():
    pod = load_documents('{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", '
                         '"labels": {"app": "web\\n"}}}')[0]
    assert "metadata.labels.app: " in exact(ManifestError, parse_pod, pod)
    ns = load_documents('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x\\n"}}')[0]
    assert "metadata.name: " in exact(ManifestError, parse_namespace, ns)


def test_a_yaml_stream_within_the_bounds_still_loads():
    docs = load_yaml_all("a: 1\n---\nb: [1, {c: 18446744073709551615}]\n", "test")
    assert docs == [{"a": 1}, {"b": [1, {"c": 2 ** 64 - 1}]}]


# ---- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, field", [
    ('stateDir: ""', "stateDir"),                                  # down --purge deleted it
    ("stateDir: /", "stateDir"),
    ("stateDir: /var/lib", "stateDir"),
    ("stateDir: /etc", "stateDir"),
    ("stateDir: var/lib/capillary", "stateDir"),
    ("stateDir: /var/lib/../../etc", "stateDir"),
    ("stateDir: /sys/fs/bpf", "stateDir"),
    ('stateDir: "/var/lib/capillary\\n"', "stateDir"),
    ("datapath: {bpfRoot: /sys/fs/bpf/../../../etc}", "datapath.bpfRoot"),
    ("datapath: {bpfRoot: /sys/fs/bpf/}", "datapath.bpfRoot"),
    ("datapath: {bpfRoot: /sys/fs/bpf/./x}", "datapath.bpfRoot"),
    ("podCIDR: 0.0.0.0/1", "podCIDR"),
    ("podCIDR: 224.0.0.0/4", "podCIDR"),
    ("podCIDR: 8.8.8.0/24", "podCIDR"),
    ('node: "node1\\n"', "node"),
    ('datapath: {routerDevice: "cap\\n"}', "datapath.routerDevice"),
    ("nats: {host: 'a b'}", "nats.host"),
    ("nats: {port: true}", "nats.port"),
    ("events: {ringBytes: %d}" % (1 << 80), "events.ringBytes"),
    ("events: {history: 100000000000}", "events.history"),
    ("maps: {endpoints: " + "9" * 5000 + "}", "config"),          # ValueError before
    ("[" * 5000, "config"),                                        # RecursionError before
    ("a: &a 1\nb: *a\n", "config"),
])
def test_config_refuses_what_would_hurt_the_node(text, field):
    assert exact(ConfigError, parse_config, text).startswith(f"{field}")


@pytest.mark.parametrize("text", ["stateDir: /var/lib/capillary/", "stateDir: /tmp/pytest-1/state",
                                  "podCIDR: 192.168.0.0/16", "podCIDR: 172.20.0.0/16",
                                  "podCIDR: 100.64.0.0/24", "datapath: {bpfRoot: /sys/fs/bpf/capillary/}",
                                  "nats: {host: nats}", "metrics: {host: 0.0.0.0}"])
def test_config_still_accepts_sensible_values(text):
    parse_config(text)


# ---- policies ---------------------------------------------------------------------------------

def cnp(spec: dict, name: str = "p") -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": {"endpointSelector": {}, **spec}}


@pytest.mark.parametrize("doc, path", [
    (cnp({"ingress": [{}], "description": deep(3000)}), "document"),          # RecursionError before
    (cnp({"ingress": [{"fromCIDR": ["10.0.0.0/24"] * (MAX_LIST + 1)}]}),
     "spec.ingress[0].fromCIDR"),
    (cnp({"ingress": [{"toPorts": [{"ports": [{"port": 10 ** 5000}]}]}]}),
     "spec.ingress[0].toPorts[0].ports[0].port"),                             # ValueError before
    (cnp({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": f"a{i}"}} for i in range(600)],
                       "toPorts": [{"ports": [{"port": str(p)} for p in range(1, 501)]}]}]}),
     "spec"),                                                                 # 300,000 terms
    (cnp({"ingress": [{"fromEntities": ["cluster"],                          # 3 x 16 keys a port
                       "toPorts": [{"ports": [{"port": "1", "endPort": 65535}] * 6000}]}]}), "spec"),
    (cnp({"ingress": [{}]}, name="p\n"), "metadata.name"),
])
def test_hostile_policies_are_policy_errors_naming_the_field(doc, path):
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert type(info.value) is PolicyError and info.value.path == path, str(info.value)


def test_a_policy_at_the_terms_limit_is_accepted():
    ports = [{"port": str(p), "protocol": "TCP"} for p in range(1, 513)]
    doc = cnp({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": f"a{i}"}} for i in range(512)],
                            "toPorts": [{"ports": ports}]}]})
    assert 512 * 512 == MAX_POLICY_TERMS
    assert len(parse_policy(doc).policy.rules) == 1


def test_a_msgpack_map_key_that_is_not_a_string_reaches_the_parser_as_an_error():
    doc = msgpack.unpackb(msgpack.packb({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                         "metadata": {"name": "p", 7: "x"}}), strict_map_key=False)
    assert exact(PolicyError, parse_policy, doc).endswith("metadata.7: unknown field")


def test_compiling_stops_at_the_limit_it_is_given():
    from services.policyd.compiler import Endpoint, TooManyEntries, Universe, compile_endpoint
    doc = cnp({"ingress": [{"fromEntities": ["cluster"], "toPorts": [{"ports": [{"port": "1", "endPort": 65535}]}]}]})
    policy = parse_policy(doc).policy
    universe = Universe({256 + i: {"k8s:app": f"a{i}", "k8s:io.kubernetes.pod.namespace": "x"} for i in range(100)})
    with pytest.raises(TooManyEntries):
        compile_endpoint(Endpoint(1, 256), [policy], universe, limit=1000)
    assert len(compile_endpoint(Endpoint(1, 256), [policy], universe, limit=10_000)) == 2 + 101 * 3 * 16


# ---- files the CLI and the services read -----------------------------------------------------

def test_manifest_files_are_read_within_the_limit_and_as_text(tmp_path):
    from services.cli.objects import read_documents
    from services.runtime.bus import ServiceError
    binary, big = tmp_path / "binary", tmp_path / "big"
    binary.write_bytes(b"\xff\xfe" * 10)
    big.write_bytes(b"#" * (MAX_TEXT_BYTES + 1))    # (/dev/zero was read until memory ran out)
    for source, words in ((str(big), "over the limit"), (str(binary), "not UTF-8 text")):
        with pytest.raises(ServiceError) as info:
            read_documents(source)
        assert words in info.value.message


def test_config_files_are_read_within_the_limit_and_as_text(tmp_path):
    from services.runtime.config import load_config
    binary, big = tmp_path / "binary", tmp_path / "big"
    binary.write_bytes(b"\xff\xfe" * 10)
    big.write_bytes(b"#" * (MAX_TEXT_BYTES + 1))
    assert "over the limit" in exact(ConfigError, load_config, str(big))
    assert "not UTF-8 text" in exact(ConfigError, load_config, str(binary))   # UnicodeDecodeError before


# ---- map owners: the last line of defence ----------------------------------------------------

@pytest.mark.parametrize("fields", [dict(endpoint_id=65537), dict(identity=1 << 32), dict(port=70000),
                                    dict(endpoint_id=-1)])
def test_a_policy_key_that_does_not_fit_its_struct_is_refused_not_truncated(fields):
    from services.datapath.maps.policy import Key
    key = Key(**{"endpoint_id": 1, "egress": False, "identity": 256, "protocol": 6, "port": 80,
                 "prefixlen": 96, **fields})
    with pytest.raises(ValueError, match="does not fit"):
        key.raw()                               # endpoint 65537 was written as endpoint 1


def test_an_endpoint_entry_that_does_not_fit_its_struct_is_refused_not_truncated():
    from services.datapath.maps.endpoints import Endpoint
    ep = Endpoint("10.0.0.2", ifindex=7, identity=256, endpoint_id=65537,
                  host_mac="0a:00:00:00:00:01", pod_mac="0a:00:00:00:00:02")
    with pytest.raises(ValueError, match="endpoint_id: 65537 does not fit in 16 bits"):
        ep.value()


def test_an_unknown_field_without_a_name_is_still_named():
    message = exact(SchemaError, EndpointPolicy.from_wire, {"v": 1, "kind": "policy.endpoint", "endpoint_id": 1, "": 2})
    assert message == "'': unknown field"
