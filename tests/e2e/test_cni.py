"""The CNI plugin with a real client: podman 4.3 on its CNI backend runs busybox containers on
a capillary network. They reach each other and capillary's own pods, a policy on their labels
allows and denies, flows name them, and `podman rm` leaves nothing. The commands podman never
sends (CHECK, GC, STATUS) and the error cases are driven with the spec's environment.

The plugin that runs is this checkout's, installed into a directory of the test's own (as
`make setup` installs it into /opt/cni/bin), which podman and ctr are pointed at."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from services.cni.install import install
from tests.support.flows import FlowCollector
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.containerd import Containerd
from tests.support.podman import IMAGE, Podman
from tests.support.traffic import Servers, probe

pytestmark = [pytest.mark.e2e]
PORT = 8080


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cni-bin")
    install(directory)
    return directory


def cni(plugin_dir: Path, command: str, config: dict, **env: str) -> tuple[int, dict | None]:
    """Run the test's plugin as a runtime would: CNI_* environment, config on stdin."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    environ.update({"CNI_COMMAND": command, "CNI_PATH": str(plugin_dir), **env})
    proc = subprocess.run([plugin_dir / "capillary"], input=json.dumps(config), capture_output=True, text=True,
                          env=environ, timeout=60)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture(scope="module")
def podman(node, plugin_dir, tmp_path_factory):
    pm = Podman(tmp_path_factory.mktemp("podman"), plugin_dirs=(str(plugin_dir), "/usr/lib/cni"))
    try:
        pm.import_busybox()
        pm.network("capnet", {"type": "capillary", "config": str(node.config_path)})
        yield pm
    finally:
        pm.close()


@pytest.fixture(scope="module")
def scene(node, podman):
    """Two podman containers (web, client) and a capillary pod, each with an echo server."""
    podman.run("web1", "capnet", labels={"app": "web"})
    podman.run("client1", "capnet", labels={"app": "client"})
    node.apply(docs(namespace_doc("cn"), pod_doc("cn", "native", {"app": "native"})))
    servers = Servers()
    for ref in ("default/web1", "default/client1", "cn/native"):
        servers.start(node.netns(ref), PORT)
    try:
        yield {ref: node.pods()[ref] for ref in ("default/web1", "default/client1", "cn/native")}
    finally:
        servers.close()
        node.cli("delete", "namespace", "cn")


def ip(scene, ref: str) -> str:
    return scene[ref]["status"]["podIP"]


def test_podman_containers_are_pods_with_their_interface_and_labels(node, podman, scene):
    web = scene["default/web1"]
    assert web["metadata"]["labels"] == {"app": "web"}
    assert web["spec"]["attachment"].startswith("cni/capnet/")
    assert web["spec"]["netns"] == podman.netns("web1")
    addr = podman("exec", "web1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{ip(scene, 'default/web1')}/32" in addr
    routes = podman("exec", "web1", "ip", "route").stdout
    assert f"default via {node.router_ip} dev eth0" in routes


def test_containers_reach_each_other_and_capillary_pods(node, podman, scene):
    web, native = ip(scene, "default/web1"), ip(scene, "cn/native")
    assert podman("exec", "client1", "ping", "-c", "1", "-W", "2", web, check=False).returncode == 0
    assert podman("exec", "web1", "ping", "-c", "1", "-W", "2", native, check=False).returncode == 0
    assert probe(node.netns("cn/native"), "tcp", web, PORT)
    assert probe(node.netns("default/web1"), "tcp", native, PORT)


def test_a_policy_on_container_labels_allows_and_denies_and_flows_name_them(node, podman, scene):
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "web-from-client", "namespace": "default"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}}
    flows = FlowCollector(node)
    node.apply(yaml.safe_dump(policy))
    try:
        web = ip(scene, "default/web1")
        assert probe(node.netns("default/client1"), "tcp", web, PORT)
        assert not probe(node.netns("cn/native"), "tcp", web, PORT)
        seen = flows.take()
        dropped = [f for f in seen if f["verdict"] == "DROPPED"
                   and f["destination"].get("pod_name") == "web1"]
        assert dropped and dropped[0]["source"]["pod_name"] == "native"
        forwarded = [f for f in seen if f["verdict"] == "FORWARDED"
                     and f["source"].get("pod_name") == "client1"]
        assert forwarded and "k8s:app=client" in forwarded[0]["source"]["labels"]
    finally:
        flows.close()
        node.cli("delete", "cnp", "web-from-client", "-n", "default")


def test_check_verifies_the_kernel_and_the_adds_result_and_names_what_is_missing(node, plugin_dir):
    """CHECK, as the spec has it, with the ADD's result as prevResult: passes while both the
    plumbing and the result hold, and names the missing route, an address the pod does not
    have, and a prevResult that is not there at all."""
    ns = f"cnichk-{node.tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    conf = {"cniVersion": "1.1.0", "name": "chknet", "type": "capillary", "config": str(node.config_path)}
    env = {"CNI_CONTAINERID": "chk0001", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0"}
    try:
        rc, added = cni(plugin_dir, "ADD", conf, **env)
        assert rc == 0, added
        checked = {**conf, "prevResult": added}
        assert cni(plugin_dir, "CHECK", checked, **env) == (0, None)
        subprocess.run(["ip", "-n", ns, "route", "del", "default"], check=True)
        rc, err = cni(plugin_dir, "CHECK", checked, **env)
        assert rc == 1 and err["code"] == 100
        assert f"default route via {node.router_ip} on eth0 is missing" in err["msg"]
        subprocess.run(["ip", "-n", ns, "route", "add", "default", "via", node.router_ip, "dev", "eth0"], check=True)
        assert cni(plugin_dir, "CHECK", checked, **env) == (0, None)
        stale = {**added, "ips": [{**added["ips"][0], "address": "10.254.254.254/32"}]}
        rc, err = cni(plugin_dir, "CHECK", {**conf, "prevResult": stale}, **env)
        assert rc == 1 and err["code"] == 100
        assert "address 10.254.254.254/32 of prevResult is not the pod's" in err["msg"]
        rc, err = cni(plugin_dir, "CHECK", conf, **env)
        assert (rc, err["code"]) == (1, 7) and err["msg"].startswith("prevResult:")
        rc, err = cni(plugin_dir, "CHECK", checked, **{**env, "CNI_CONTAINERID": "f" * 64})
        assert rc == 1 and err["code"] == 3
        assert cni(plugin_dir, "DEL", conf, **env) == (0, None)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        node.cli("delete", "pod", "chk0001", "-n", "default", check=False)


def test_status_is_ok_on_a_healthy_node(node, plugin_dir):
    conf = {"cniVersion": "1.1.0", "name": "capnet", "type": "capillary", "config": str(node.config_path)}
    assert cni(plugin_dir, "STATUS", conf) == (0, None)


def test_add_del_gc_with_the_spec_environment(node, plugin_dir, tmp_path):
    """ADD into a netns of our own (as containerd would), GC that keeps it while valid and
    removes it once not, and DEL that succeeds again when there is nothing left."""
    ns = f"cnigc-{node.tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        conf = {"cniVersion": "1.1.0", "name": "gcnet", "type": "capillary", "config": str(node.config_path),
                "args": {"cni": {"labels": [{"key": "app", "value": "gc"}]}}}
        env = {"CNI_CONTAINERID": "gc0001", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "net1",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=gcns;K8S_POD_NAME=gc-pod"}
        rc, res = cni(plugin_dir, "ADD", conf, **env)
        assert rc == 0, res
        assert res["cniVersion"] == "1.1.0" and res["interfaces"][1] == {
            "name": "net1", "mac": res["interfaces"][1]["mac"], "sandbox": f"/run/netns/{ns}"}
        assert res["ips"] == [{"address": res["ips"][0]["address"], "gateway": node.router_ip, "interface": 1}]
        assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": node.router_ip}]
        assert node.pods()["gcns/gc-pod"]["metadata"]["labels"] == {"app": "gc"}

        keep = {**conf, "cni.dev/valid-attachments": [{"containerID": "gc0001", "ifname": "net1"}]}
        assert cni(plugin_dir, "GC", keep) == (0, None)
        assert "gcns/gc-pod" in node.pods()
        assert cni(plugin_dir, "GC", {**conf, "cni.dev/valid-attachments": []}) == (0, None)
        assert "gcns/gc-pod" not in node.pods()
        assert "net1" not in subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
        assert cni(plugin_dir, "DEL", conf, **env) == (0, None)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        node.cli("delete", "namespace", "gcns", check=False)


def test_an_old_config_version_gets_an_old_result_and_del_is_idempotent(node, plugin_dir, tmp_path):
    ns = f"cniold-{node.tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    conf = {"cniVersion": "0.4.0", "name": "oldnet", "type": "capillary", "config": str(node.config_path)}
    env = {"CNI_CONTAINERID": "old0001", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0"}
    try:
        rc, res = cni(plugin_dir, "ADD", conf, **env)
        assert rc == 0, res
        assert res["cniVersion"] == "0.4.0" and res["ips"][0]["version"] == "4"
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    assert cni(plugin_dir, "DEL", conf, **env) == (0, None)      # the netns is already gone
    assert cni(plugin_dir, "DEL", conf, **env) == (0, None)      # and so is the pod
    assert "default/old0001" not in node.pods()


def test_errors_follow_the_spec_and_leave_nothing(node, plugin_dir, tmp_path):
    ns = f"cnierr-{node.tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    conf = {"cniVersion": "1.0.0", "name": "errnet", "type": "capillary", "config": str(node.config_path)}
    env = {"CNI_CONTAINERID": "err0001", "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0"}
    before = node.pods()
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True)
        rc, err = cni(plugin_dir, "ADD", conf, **env)          # the netns already has an eth0
        assert rc == 1 and err["code"] == 101 and "already has an eth0" in err["msg"]
        rc, err = cni(plugin_dir, "ADD", conf, **{**env, "CNI_ARGS": "K8S_POD_NAMESPACE=fresh;K8S_POD_NAME=x"})
        assert rc == 1 and err["code"] == 101
        assert "fresh" not in node.cli("get", "namespaces").stdout.split()
        rc, err = cni(plugin_dir, "ADD", {**conf, "mtu": 70000}, **env)
        assert (rc, err["code"]) == (1, 7) and err["msg"].startswith("mtu:")
        rc, err = cni(plugin_dir, "ADD", {**conf, "type": "bridge"}, **env)
        assert (rc, err["code"]) == (1, 7) and err["msg"].startswith("type:")
        rc, err = cni(plugin_dir, "ADD", conf, **{**env, "CNI_IFNAME": "a/b"})
        assert (rc, err["code"]) == (1, 4) and err["msg"].startswith("CNI_IFNAME:")
        rc, err = cni(plugin_dir, "ADD", {**conf, "cniVersion": "0.3.1"}, **env)
        assert (rc, err["code"]) == (1, 1)
        stopped = tmp_path / "stopped.json"
        stopped.write_text(json.dumps({"url": "nats://127.0.0.1:1", "user": "admin", "password": "x"}))
        rc, err = cni(plugin_dir, "ADD", {**conf, "context": str(stopped)}, **env)
        assert (rc, err["code"]) == (1, 11) and "capillary up" in err["details"]
        rc, err = cni(plugin_dir, "STATUS", {**conf, "cniVersion": "1.1.0", "context": str(stopped)})
        assert (rc, err["code"]) == (1, 50)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    assert node.pods() == before
    assert not [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                .splitlines() if line.split(": ")[1].startswith(node.lxc_prefix)
                and line.split(": ")[1].split("@")[0] not in {p["status"]["hostInterface"] for p in before.values()}]


def test_podman_rm_leaves_nothing(node, podman, scene):
    podman.run("gone1", "capnet", labels={"app": "gone"})
    pod = node.pods()["default/gone1"]
    host_if, pod_ip = pod["status"]["hostInterface"], pod["status"]["podIP"]
    podman("rm", "-f", "-t", "0", "gone1")
    assert "default/gone1" not in node.pods()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert host_if not in links
    endpoints = node.cli("bpf", "endpoint", "list", "-o", "json").stdout
    assert pod_ip not in endpoints
    assert pod_ip not in node.cli("get", "ipcache").stdout


@pytest.fixture
def containerd(node, podman, tmp_path_factory):
    ctrd = Containerd(tmp_path_factory.mktemp("containerd"))
    try:
        archive = ctrd.dir / "busybox.tar"
        podman("save", "--format", "oci-archive", "-o", str(archive), IMAGE)
        ctrd.ctr("images", "import", "--base-name", IMAGE.rsplit(":", 1)[0], str(archive))
        ctrd.network(f"capillary-test-{node.tag}", json.dumps(
            {"cniVersion": "1.0.0", "name": f"ctrnet-{node.tag}",
             "plugins": [{"type": "capillary", "config": str(node.config_path)}]}))
        yield ctrd
    finally:
        ctrd.close()


def test_ctr_run_cni_puts_a_containerd_container_on_capillary(node, containerd, plugin_dir, scene):
    """`ctr run --rm --cni`: ADD with CNI_CONTAINERID <namespace>-<id> and /proc/PID/ns/net,
    labels from containerd's API; the container reaches a podman one; DEL when it ends."""
    name = f"ctr{node.tag}"
    run = containerd.run_cni(plugin_dir, "--rm", "--runc-binary", "/usr/sbin/runc", "--label", "app=ctr",
                             IMAGE, name, "sleep", "600")
    ref = f"default/default-{name}"
    try:
        deadline = time.monotonic() + 60
        while ref not in node.pods():
            assert time.monotonic() < deadline and run.poll() is None, f"no pod for the container: {run.stderr}"
            time.sleep(0.3)
        pod = node.pods()[ref]
        assert pod["metadata"]["labels"] == {"app": "ctr"}
        assert pod["spec"]["netns"].startswith("/proc/") and pod["spec"]["attachment"].startswith("cni/ctrnet-")
        web = ip(scene, "default/web1")
        exec_ = containerd.ctr("task", "exec", "--exec-id", "p1", name, "ping", "-c", "1", "-W", "2", web, check=False)
        assert exec_.returncode == 0, exec_.stdout + exec_.stderr
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", name, check=False)
        run.wait(timeout=60)
    assert ref not in node.pods()
