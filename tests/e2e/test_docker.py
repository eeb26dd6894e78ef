"""endpointd as Docker's network and IPAM driver, with a private dockerd: `docker network
create -d <driver> --ipam-driver <driver>`, `docker run --network`, a policy on compose's
service label, and a docker-compose app brought up and down on capillary."""
from __future__ import annotations

import http.client
import json
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.dockerd import IMAGE, SOCKET, Dockerd
from tests.support.node import Node, docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, probe

pytestmark = [pytest.mark.e2e]
PORT = 8080
DOCKER_HOST = f"unix://{SOCKET}"


@pytest.fixture(scope="module")
def docker_node(tmp_path_factory):
    tag = secrets.token_hex(2)
    node = Node(tmp_path_factory.mktemp("node"), tag=tag,
                docker={"plugin": f"/run/docker/plugins/capillary-{tag}.sock", "host": DOCKER_HOST})
    try:
        node.up()
        yield node
    finally:
        node.purge()
        left = node.leftovers() + [p for p in [node.docker["plugin"]] if Path(p).exists()]
        assert not left, f"the node left things behind: {left}"


@pytest.fixture(scope="module")
def dockerd(docker_node, tmp_path_factory):
    d = Dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        d.import_busybox()
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def capnet(docker_node, dockerd):
    driver = f"capillary-{docker_node.tag}"
    dockerd("network", "create", "-d", driver, "--ipam-driver", driver, "capnet")
    return "capnet"


def test_docker_run_containers_are_pods_and_reach_each_other_and_capillary_pods(docker_node, dockerd, capnet):
    node = docker_node
    node.apply(docs(namespace_doc("dn"), pod_doc("dn", "native", {"app": "native"})))
    try:
        for name, app in (("web1", "web"), ("client1", "client")):
            dockerd("run", "-d", "--name", name, "--network", capnet, "--label", f"app={app}", IMAGE, "sleep", "600")
        pods = node.pods()
        web, client = pods["docker/web1"], pods["docker/client1"]
        assert web["metadata"]["labels"] == {"app": "web"} and web["spec"]["netns"] == dockerd.netns("web1")
        addr = dockerd("exec", "web1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
        assert f"{web['status']['podIP']}/32" in addr
        assert f"default via {node.router_ip} dev eth0" in dockerd("exec", "web1", "ip", "route").stdout
        for target in (web["status"]["podIP"], node.pod_ip("dn/native")):
            assert dockerd("exec", "client1", "ping", "-c", "1", "-W", "2", target, check=False).returncode == 0
        dockerd("rm", "-f", "web1", "client1")
        assert not {"docker/web1", "docker/client1"} & set(node.pods())
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert web["status"]["hostInterface"] not in links and "tmp" not in links.split(": ")[1::2]
    finally:
        dockerd("rm", "-f", "web1", "client1", check=False)
        node.cli("delete", "namespace", "dn")


COMPOSE = """
services:
  web:
    image: {image}
    command: ["sleep", "600"]
  client:
    image: {image}
    command: ["sleep", "600"]
  other:
    image: {image}
    command: ["sleep", "600"]
networks:
  default:
    driver: {driver}
    ipam:
      driver: {driver}
"""


def test_a_compose_app_on_capillary_with_a_policy_on_its_services(docker_node, dockerd, tmp_path):
    node = docker_node
    driver = f"capillary-{node.tag}"
    (tmp_path / "compose.yaml").write_text(COMPOSE.format(image=IMAGE, driver=driver))
    project = f"app{node.tag}"
    compose = ("-p", project, "-f", str(tmp_path / "compose.yaml"))
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "web-from-client", "namespace": project},
              "spec": {"endpointSelector": {"matchLabels": {"com.docker.compose.service": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"com.docker.compose.service": "client"}}]}]}}
    servers = Servers()
    try:
        dockerd(*compose, "up", "-d", program="docker-compose", timeout=300)
        pods = {ref: p for ref, p in node.pods().items() if ref.startswith(f"{project}/")}
        assert set(pods) == {f"{project}/{project}-{s}-1" for s in ("web", "client", "other")}, pods
        web = pods[f"{project}/{project}-web-1"]
        assert web["metadata"]["labels"]["com.docker.compose.service"] == "web"
        servers.start(web["spec"]["netns"], PORT)
        node.apply(yaml.safe_dump(policy))
        assert probe(pods[f"{project}/{project}-client-1"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
        assert not probe(pods[f"{project}/{project}-other-1"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
    finally:
        servers.close()
        node.cli("delete", "cnp", "web-from-client", "-n", project, check=False)
        dockerd(*compose, "down", program="docker-compose", timeout=300, check=False)
    assert not [ref for ref in node.pods() if ref.startswith(f"{project}/")]


def test_a_killed_container_and_a_node_restart_leave_nothing_orphaned(docker_node, dockerd, capnet):
    """`docker kill` removes the container's pod; a node restart keeps a running container's
    pod, connectivity and policy, and Docker can still take it down afterwards."""
    node = docker_node
    for name, app in (("k-web", "web"), ("k-client", "client"), ("k-other", "other"), ("k-gone", "gone")):
        dockerd("run", "-d", "--name", name, "--network", capnet, "--label", f"app={app}", IMAGE, "sleep", "600")
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "k-web", "namespace": "docker"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}}
    servers = Servers()
    try:
        dockerd("kill", "k-gone")
        assert "docker/k-gone" not in node.pods()
        dockerd("rm", "k-gone")
        node.apply(yaml.safe_dump(policy))
        node.down()
        node.up()
        node.wait_healthy()
        pods = node.pods()
        web = pods["docker/k-web"]
        servers.start(web["spec"]["netns"], PORT)
        assert probe(pods["docker/k-client"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
        assert not probe(pods["docker/k-other"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
        dockerd("rm", "-f", "k-web", "k-client", "k-other")
        assert not {"docker/k-web", "docker/k-client", "docker/k-other"} & set(node.pods())
    finally:
        servers.close()
        dockerd("rm", "-f", "k-web", "k-client", "k-other", "k-gone", check=False)
        node.cli("delete", "cnp", "k-web", "-n", "docker", check=False)


def test_a_dockerd_restart_keeps_live_containers_and_removes_stopped_ones_cleanly(docker_node, dockerd, capnet):
    """With live-restore, containers run on while dockerd restarts: their pods, addresses,
    connectivity and policy stay as they were. A dockerd that starts without live-restore
    stops the containers it finds running: their endpoints are removed cleanly (no pod, veth
    or address left) and new containers get addresses and connectivity as before."""
    node = docker_node
    names = {"r-web": "web", "r-client": "client", "r-other": "other"}
    refs = {f"docker/{name}" for name in names}
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "r-web", "namespace": "docker"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}}
    servers = Servers()
    try:
        dockerd.restart(live_restore=True)
        for name, app in names.items():
            dockerd("run", "-d", "--name", name, "--network", capnet, "--label", f"app={app}", IMAGE, "sleep", "600")
        node.apply(yaml.safe_dump(policy))
        before = node.pods()
        web = before["docker/r-web"]
        servers.start(web["spec"]["netns"], PORT)
        dockerd.restart()
        assert {ref: before[ref] for ref in refs} == {ref: p for ref, p in node.pods().items() if ref in refs}
        assert probe(before["docker/r-client"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
        assert not probe(before["docker/r-other"]["spec"]["netns"], "tcp", web["status"]["podIP"], PORT)
        assert dockerd("exec", "r-client", "ping", "-c", "1", "-W", "2", web["status"]["podIP"],
                       check=False).returncode == 0
        servers.close()
        dockerd.restart(live_restore=False)
        wait_for(lambda: not refs & set(node.pods()), "the stopped containers' pods to go")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert not [ref for ref in refs if before[ref]["status"]["hostInterface"] in links]
        dockerd("start", "r-web", "r-client")
        pods = node.pods()
        assert {pods[f"docker/{n}"]["metadata"]["labels"]["app"] for n in ("r-web", "r-client")} == {"web", "client"}
        assert dockerd("exec", "r-client", "ping", "-c", "1", "-W", "2", pods["docker/r-web"]["status"]["podIP"],
                       check=False).returncode == 0
        dockerd("rm", "-f", *names)
        assert not refs & set(node.pods())
    finally:
        servers.close()
        dockerd("rm", "-f", *names, check=False)
        node.cli("delete", "cnp", "r-web", "-n", "docker", check=False)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def plugin(node: Node, call: str, body: dict) -> tuple[int, dict]:
    """POST one libnetwork remote-driver call to the node's plugin socket, as dockerd does."""
    conn = _UnixHTTP(node.docker["plugin"])
    try:
        conn.request("POST", f"/{call}", json.dumps(body), {"Content-Type": "application/vnd.docker.plugins.v1+json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_docker_address_reservations_survive_a_node_restart(docker_node):
    """RequestAddress, then the node restarts before CreateEndpoint and Join: the address is
    still Docker's (no pod gets it, CreateEndpoint takes it), and ReleaseAddress frees it."""
    node = docker_node
    status, pool = plugin(node, "IpamDriver.RequestPool", {"AddressSpace": "capillary", "Pool": "", "V6": False})
    assert status == 200, pool
    status, got = plugin(node, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": {}})
    assert status == 200, got
    ip = got["Address"].split("/")[0]
    node.down()
    node.up()
    node.wait_healthy()
    try:
        node.apply(docs(namespace_doc("ipam"), *(pod_doc("ipam", f"p{i}", {"app": "p"}) for i in range(3))))
        assert ip not in {node.pod_ip(f"ipam/p{i}") for i in range(3)}
        status, out = plugin(node, "NetworkDriver.CreateEndpoint",
                             {"NetworkID": "n" * 64, "EndpointID": "e" * 64, "Interface": {"Address": f"{ip}/32"}})
        assert status == 200, out
        assert plugin(node, "NetworkDriver.DeleteEndpoint", {"NetworkID": "n" * 64, "EndpointID": "e" * 64})[0] == 200
        assert plugin(node, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": ip})[0] == 200
        node.down()
        node.up()
        node.wait_healthy()
        status, again = plugin(node, "IpamDriver.RequestAddress",
                               {"PoolID": pool["PoolID"], "Address": ip, "Options": {}})
        assert status == 200, again            # free again, also after a restart
        assert plugin(node, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": ip})[0] == 200
    finally:
        node.cli("delete", "namespace", "ipam", check=False)
