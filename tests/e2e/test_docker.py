"""endpointd as Docker's network and IPAM driver, with a private dockerd: `docker network
create -d <driver> --ipam-driver <driver>`, `docker run --network`, a policy on compose's
service label, and a docker-compose app brought up and down on capillary."""
from __future__ import annotations

import secrets
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
