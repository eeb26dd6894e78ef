"""capillary deployed with compose.yaml on a real engine: six containers from one image,
the CLI from the host and from inside a container, the disruption suite's steady traffic
through `down` + `up` (no connection broken, no ping lost, no denied connect answered), pods,
a policy and the flows it produces (exactly those the end-to-end suite expects of an embedded
node), `down` + `up` keeping pods and their connectivity, a bad setting refused, and `down -v` plus a purge leaving nothing.

Run with `make compose-test`; the tests share one deployment and run in order."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat

import pytest
import yaml

from tests.e2e.flow_model import shape
from tests.support import disruption
from tests.e2e.test_flows import CLIENT_POLICY, EXPECTED, SERVER_POLICY, C, S
from tests.support.compose import TIMINGS, Deployment
from tests.support.flows import FlowCollector
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers, probe

SERVICES = ("policyd", "routed", "flowd", "endpointd")


class Scene:
    """Two pods (fl/client, fl/server with echo servers on 80 and 81), the e2e flow tests'
    policies (server: ingress from the client on 80 only; client: audit-mode egress), and
    a subscriber to the node's flows on NATS, from the host."""

    def __init__(self, dep) -> None:
        self.dep = dep
        self.servers = Servers()
        self.collector = None
        dep.apply(docs(namespace_doc("fl"), pod_doc("fl", "client", {"app": "client"}),
                       pod_doc("fl", "server", {"app": "server"})))
        pods = dep.pods()
        self.ns = {p: pods[p]["spec"]["netns"] for p in (C, S)}
        self.ip = {p: pods[p]["status"]["podIP"] for p in (C, S)}
        self.servers.start(self.ns[S], 80, 81)
        dep.apply(docs(yaml.safe_dump(SERVER_POLICY), yaml.safe_dump(CLIENT_POLICY)))
        self.collector = FlowCollector(dep)

    def allowed(self, sport: int) -> bool:
        return probe(self.ns[C], "tcp", self.ip[S], 80, sport=sport)

    def denied(self, sport: int) -> bool:
        return not probe(self.ns[C], "tcp", self.ip[S], 81, sport=sport, timeout=0.5)

    def explain(self) -> str:
        """The server's policy entries, the last flows and the logs of the services that
        write them, for a failure."""
        out = [self.dep.cli(*args, check=False).stdout for args in
               (("bpf", "policy", "get", S), ("observe", "--last", "30"))]
        out.append(self.dep.compose("logs", "--no-color", "--tail", "40", "policyd", "endpointd",
                                    check=False).stdout)
        return "\n".join(out)

    def close(self) -> None:
        self.servers.close()
        if self.collector:
            self.collector.close()
            self.collector = None


@pytest.fixture(scope="module")
def scene(deployment):
    sc = Scene(deployment)
    try:
        yield sc
    finally:
        sc.close()


def test_six_containers_healthy_with_only_the_access_they_need(deployment):
    assert deployment.health() == {s: "healthy" for s in ("nats", *SERVICES, "web")}
    for c in deployment.containers().values():
        service, host = c["Config"]["Labels"]["com.docker.compose.service"], c["HostConfig"]
        assert host["NetworkMode"] == "host" and not host["Privileged"], service
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service
        if service == "nats":
            assert not host["CapAdd"]
            continue
        assert sorted(host["CapAdd"]) == ["NET_ADMIN", "SYS_ADMIN"], service
        propagation = {m["Destination"]: m["Propagation"] for m in c["Mounts"] if m["Type"] == "bind"}
        if service == "web":        # walks probe from inside pods; it reads no map
            assert propagation["/run/netns"] == "rshared" and "/sys/fs/bpf" not in propagation
            continue
        assert propagation["/sys/fs/bpf"] == propagation["/run/netns"] == "rshared", service


def test_each_service_has_only_its_own_credentials_and_checks_health_with_them(deployment):
    nats_dir = deployment.state_dir / "nats"
    for c in deployment.containers().values():
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        if service == "nats":
            continue
        assert c["Config"]["Healthcheck"]["Test"] == ["CMD", "capillary-container", "health", service]
        seen = deployment.exec(service, "sh", "-c", f"cd {nats_dir} && ls -A . tls").stdout.split()
        # the page also has its token and, for HTTPS beyond loopback, the server's certificate
        extra = ["web.token", "server.pem", "server-key.pem"] if service == "web" else []
        assert sorted(seen) == sorted([".:", f"{service}.context.json", "tls", "tls:",
                                       "ca.pem", "client-key.pem", "client.pem", *extra]), service
        assert deployment.exec(service, "cat", str(nats_dir / "admin.context.json"), check=False).returncode != 0
        check = deployment.exec(service, "capillary-container", "health", service)
        ready = "web: answering" if service == "web" else f"{service}: ready"
        assert check.stdout.startswith(ready), check.stdout


def test_nats_beyond_loopback_runs_with_tls(deployment):
    admin = json.loads((deployment.state_dir / "nats" / "admin.context.json").read_text())
    assert admin["url"] == f"tls://127.0.0.1:{deployment.nats_port}"
    for key in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE((deployment.state_dir / "nats" / "tls" / key).stat().st_mode) == 0o600
    with socket.create_connection(("127.0.0.1", deployment.nats_port), timeout=10) as s:
        assert json.loads(s.makefile("rb").readline()[5:])["tls_required"] is True


def test_the_host_cli_reaches_the_node_with_credentials_made_on_first_up(deployment):
    admin = deployment.state_dir / "nats" / "admin.context.json"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert json.loads(admin.read_text())["url"] == f"tls://127.0.0.1:{deployment.nats_port}"
    status = deployment.status()
    assert status["healthy"] and status["node"] == "compose-test"
    assert all(status["services"][s]["healthy"] for s in SERVICES)
    # the maps the containers pinned, seen from the host through the shared bpffs
    assert {"endpoints", "ipcache", "policy", "ct", "events"} <= set(status["datapath"]["pinned_maps"])


def test_the_cli_runs_in_a_container_of_the_cli_service(deployment):
    out = deployment.run_cli("status", "-o", "json").stdout
    assert json.loads(out)["healthy"]
    out = deployment.run_cli("get", "identities", "-o", "json").stdout
    assert {i["id"] for i in json.loads(out)} >= {1, 2}
    # a service's container has only its own credentials: the CLI there gets nowhere
    assert deployment.exec("policyd", "capillary", "status", check=False).returncode != 0


def _compose_down_up(deployment) -> None:
    deployment.down()
    TIMINGS["up -d again under steady traffic"] = deployment.up()


def test_compose_down_then_up_interrupts_nothing(deployment):
    with disruption.scene(deployment) as sc:
        disruption.run(deployment, sc, _compose_down_up, "compose down + up")


def test_pods_connect_and_a_policy_denies_in_the_kernel(scene):
    assert scene.allowed(sport=41001), "client -> server:80 is allowed by the policy"
    assert scene.denied(sport=41002), "client -> server:81 is not allowed by the policy"
    scene.collector.take()


@pytest.mark.parametrize("action, sport, connect", [("tcp_allowed", 41011, "allowed"),
                                                     ("tcp_default_deny", 41012, "denied")])
def test_exactly_the_flows_of_an_embedded_node_arrive_on_nats(scene, action, sport, connect):
    scene.collector.take()
    assert getattr(scene, connect)(sport=sport)
    flows = [f for f in scene.collector.take() if sport in _ports(f)]
    assert sorted(map(shape, flows), key=repr) == sorted(EXPECTED[action], key=repr)
    subjects = {subject for subject, f in scene.collector.all()}
    assert subjects <= {f"capillary.flows.compose-test.{v}" for v in ("FORWARDED", "DROPPED", "AUDIT")}


def _ports(flow: dict) -> tuple:
    tcp = flow.get("l4", {}).get("TCP", {})
    return tcp.get("source_port"), tcp.get("destination_port")


def test_a_bad_setting_is_refused_before_anything_is_made(image, tmp_path):
    """`up` with a malformed setting fails at once (nats never turns healthy, no service
    starts) and the log names the variable; the one-off CLI exits 2 with the same line."""
    bad = Deployment(tmp_path, image, project="capillary-compose-bad", CAPILLARY_POD_CIDR="10.1.0.0/33")
    message = "error: CAPILLARY_POD_CIDR: podCIDR: '33' is not a valid netmask"
    try:
        up = bad.compose("up", "-d", "--no-build", check=False, timeout=120)
        assert up.returncode != 0
        assert message in bad.compose("logs", "--no-color", "nats").stdout
        assert set(bad.health()) == {"nats"}
        run = bad.compose("run", "--rm", "--no-deps", "-T", "routed", check=False)
        assert run.returncode == 2 and message in run.stderr
        # docker made the bind mount's source (and the volume's mount point); capillary
        # wrote nothing
        assert [p for p in bad.state_dir.rglob("*") if not p.is_dir()] == []
    finally:
        bad.down(volumes=True)
        shutil.rmtree(bad.state_dir, ignore_errors=True)
    assert bad.docker_leftovers() == []


def test_down_then_up_keeps_pods_and_their_connectivity(deployment, scene):
    before = {ref: p["status"] for ref, p in deployment.pods().items()}
    scene.collector.close()
    scene.collector = None
    deployment.down()
    assert not deployment.containers()
    # No container runs: the datapath and the namespaces are the kernel's.
    assert all(os.path.exists(path) for path in scene.ns.values())
    assert scene.allowed(sport=41021)
    assert scene.denied(sport=41022), scene.explain()
    TIMINGS["up -d again (state kept) until healthy"] = deployment.up()
    after = {ref: p["status"] for ref, p in deployment.pods().items()}
    assert after == before
    assert scene.allowed(sport=41023)
    assert scene.denied(sport=41024), scene.explain()
    scene.collector = FlowCollector(deployment)
    assert scene.denied(sport=41025)
    assert any(f["verdict"] == "DROPPED" for f in scene.collector.take())


def test_down_volumes_and_a_purge_leave_nothing_behind(deployment, scene):
    scene.close()
    deployment.down(volumes=True)
    removed = deployment.purge()
    assert any(line.startswith("removed netns") for line in removed), removed
    assert deployment.leftovers() == []
