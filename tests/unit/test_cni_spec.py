"""The CNI plugin's pure side: environment, network config, results and errors."""
from __future__ import annotations

import json

import pytest

from services.cni.spec import (CniError, attachment, parse_config, parse_environment, pod_name, pod_namespace,
                               result, result_problems, split_attachment)

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
CONF = {"cniVersion": "1.0.0", "name": "capnet", "type": "capillary"}


def conf(**extra) -> bytes:
    return json.dumps({**CONF, **extra}).encode()


@pytest.mark.parametrize("env, code, field", [
    ({"CNI_COMMAND": "FOO"}, 4, "CNI_COMMAND"),
    ({**ADD_ENV, "CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_CONTAINERID": "-bad id"}, 4, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_IFNAME": "a" * 16}, 4, "CNI_IFNAME"),
    ({**ADD_ENV, "CNI_NETNS": "relative"}, 4, "CNI_NETNS"),
    ({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME"}, 4, "CNI_ARGS"),
])
def test_bad_environment_is_code_4_naming_the_variable(env, code, field):
    with pytest.raises(CniError) as err:
        parse_environment(env)
    assert err.value.code == code and err.value.msg.startswith(field)


def test_del_needs_no_netns_and_version_needs_nothing():
    env = parse_environment({k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"})
    assert env.netns == "" and env.container_id == "abc123"
    assert parse_environment({"CNI_COMMAND": "VERSION"}).command == "VERSION"


@pytest.mark.parametrize("extra, code, field", [
    ({"cniVersion": "0.3.1"}, 1, "cniVersion"),
    ({"type": "bridge"}, 7, "type"),
    ({"name": ""}, 7, "name"),
    ({"mtu": 100}, 7, "mtu"),
    ({"context": "relative.json"}, 7, "context"),
    ({"namespace": "Bad_NS"}, 7, "namespace"),
    ({"args": {"cni": {"labels": [{"key": "app", "value": "a b"}]}}}, 7, "args.cni.labels[0].value"),
    ({"args": {"cni": {"labels": {"app": "x"}}}}, 7, "args.cni.labels"),
])
def test_bad_config_names_the_field(extra, code, field):
    with pytest.raises(CniError) as err:
        parse_config(conf(**extra), "ADD")
    assert err.value.code == code and err.value.msg.startswith(field)


def test_not_json_is_code_6():
    with pytest.raises(CniError) as err:
        parse_config(b"{", "ADD")
    assert err.value.code == 6


def test_gc_needs_valid_attachments():
    with pytest.raises(CniError) as err:
        parse_config(conf(), "GC")
    assert err.value.code == 7 and err.value.msg.startswith("cni.dev/valid-attachments")
    parsed = parse_config(conf(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}), "GC")
    assert parsed.valid_attachments == (("a", "eth0"),)


def test_labels_from_the_args_convention():
    parsed = parse_config(conf(args={"cni": {"labels": [{"key": "app", "value": "web"}]}}), "ADD")
    assert parsed.labels == {"app": "web"}


def test_pod_names_from_cni_args_or_the_container_id():
    env = parse_environment({**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=happy_Turing"})
    assert pod_name(env) == "happy-turing"
    assert pod_name(parse_environment(ADD_ENV)) == "abc123"
    assert pod_name(parse_environment({**ADD_ENV, "CNI_CONTAINERID": "ab" * 32})) == "c-" + "ab" * 6
    assert pod_namespace(env, parse_config(conf(namespace="apps"), "ADD")) == "apps"
    k8s = parse_environment({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0"})
    assert (pod_namespace(k8s, parse_config(conf(namespace="apps"), "ADD")), pod_name(k8s)) == ("prod", "web-0")


def test_attachment_handles_round_trip():
    handle = attachment("capnet", "abc123", "eth0")
    assert split_attachment(handle) == ("capnet", "abc123", "eth0")
    assert split_attachment("docker/xyz") is None


def test_results_follow_the_config_version():
    pod = {"status": {"host_ifname": "lxc1", "host_mac": "aa:00:00:00:00:01", "pod_mac": "aa:00:00:00:00:02",
                      "netns": "/run/netns/x", "pod_ip": "10.0.0.5"}}
    new = result("1.0.0", pod, "eth0", "10.0.0.1")
    assert new["interfaces"][1] == {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": "/run/netns/x"}
    assert new["ips"] == [{"address": "10.0.0.5/32", "gateway": "10.0.0.1", "interface": 1}]
    assert new["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
    assert result("0.4.0", pod, "eth0", "10.0.0.1")["ips"][0]["version"] == "4"


def test_errors_are_the_spec_json():
    assert CniError(7, "mtu: bad", "hint").to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 7,
                                                                  "msg": "mtu: bad", "details": "hint"}


POD = {"spec": {"name": "a", "namespace": "default"},
       "status": {"pod_ip": "10.1.0.5", "host_ifname": "lxc1", "host_mac": "aa:aa:aa:aa:aa:01",
                  "pod_mac": "aa:aa:aa:aa:aa:02", "netns": "/run/netns/x"}}


def test_check_needs_prev_result():
    with pytest.raises(CniError) as err:
        parse_config(conf(), "CHECK")
    assert err.value.code == 7 and err.value.msg.startswith("prevResult:")
    with pytest.raises(CniError) as err:
        parse_config(conf(prevResult={"ips": "x"}), "CHECK")
    assert err.value.msg.startswith("prevResult.ips:")
    prev = result("1.0.0", POD, "eth0", "169.254.0.1")
    assert parse_config(conf(prevResult=prev), "CHECK").prev_result == prev


def test_a_result_that_still_holds_has_no_problems():
    prev = result("1.0.0", POD, "eth0", "169.254.0.1")
    assert result_problems(prev, result("1.0.0", POD, "eth0", "169.254.0.1")) == []


def test_check_names_what_departs_from_prev_result():
    prev = result("1.0.0", POD, "eth0", "169.254.0.1")
    moved = {**POD, "status": {**POD["status"], "pod_ip": "10.1.0.9", "pod_mac": "aa:aa:aa:aa:aa:09",
                               "host_ifname": "lxc2"}}
    problems = result_problems(prev, result("1.0.0", moved, "eth0", "169.254.0.2"))
    assert "interface eth0 in /run/netns/x has MAC aa:aa:aa:aa:aa:09, prevResult says aa:aa:aa:aa:aa:02" in problems
    assert "interface lxc2 on the host is not in prevResult" in problems
    assert "interface lxc1 on the host of prevResult is gone" in problems
    assert "address 10.1.0.9/32 is not in prevResult" in problems
    assert "address 10.1.0.5/32 of prevResult is not the pod's" in problems
    gateway = result_problems(prev, result("1.0.0", POD, "eth0", "169.254.0.2"))
    assert gateway == ["address 10.1.0.5/32 has gateway 169.254.0.2, prevResult says 169.254.0.1"]
