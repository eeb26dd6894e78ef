"""Disruption, as Cilium's no-interrupted-connections check: five long-lived TCP echo
connections (1 s write deadline, 5 s reply timeout), a 50 pps ping and a loop of connects to
a denied port run between two pods while the node is disrupted: kill -9 of each service and
of nats-server, `down` + `up`, and a reboot that loses bpffs but keeps KV. Pass: no
connection broken, no ping lost, no denied connect answered, and every pod's IP, identity
and endpoint unchanged.

Both directions are under policy: the client's ingress allows only a third pod, so the
server's replies pass only as replies its connection tracking knows; the server's ingress
allows the client but denies it the denied port.

CAPILLARY_DISRUPTION_ROUNDS=N repeats each disruption N times under one set of connections
(`make soak`); each test prints its figures (pytest -s, or -rA for the captured output).
"""
from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.support import disruption
from tests.support.node import docs, namespace_doc, pod_doc
from tests.support.traffic import Servers

NS = "dis"
ECHO_PORT, DENIED_PORT = 7000, 7001
ROUNDS = int(os.environ.get("CAPILLARY_DISRUPTION_ROUNDS", "1"))
POLICIES = [
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "server", "namespace": NS},
     "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
              "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
              "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                               "toPorts": [{"ports": [{"port": str(DENIED_PORT), "protocol": "TCP"}]}]}]}},
    {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "client", "namespace": NS},
     "spec": {"endpointSelector": {"matchLabels": {"app": "client"}},
              "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "third"}}]}],
              "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}]}]}},
]


@pytest.fixture(scope="module")
def scene(node):
    node.apply(docs(namespace_doc(NS), pod_doc(NS, "client", {"app": "client"}),
                    pod_doc(NS, "server", {"app": "server"}), pod_doc(NS, "third", {"app": "third"})))
    node.apply(docs(*(yaml.safe_dump(p) for p in POLICIES)))
    servers = Servers()
    try:
        servers.start(node.netns(f"{NS}/server"), ECHO_PORT, DENIED_PORT)
        yield {"client": node.netns(f"{NS}/client"), "server_ip": node.pod_ip(f"{NS}/server")}
    finally:
        servers.close()


def run(node, scene, disrupt, name: str) -> None:
    before_state = disruption.desired_state(node)
    steady = disruption.Steady(scene["client"], scene["server_ip"], ECHO_PORT, DENIED_PORT)
    try:
        disruption.settle(2)
        start = steady.snapshot()
        for _ in range(ROUNDS):
            disrupt(node)
            disruption.settle()
        figures = disruption.delta(start, steady.stop())
    finally:
        steady.kill()
    after_state = disruption.desired_state(node)
    print(f"\ndisruption {name} x{ROUNDS}: " + json.dumps(figures))
    assert figures["exchanges"] > 0 and figures["pings_sent"] > 0 and figures["denied_tries"] > 0, figures
    assert figures["denied_ok"] == 0, f"{name}: a denied connection was answered: {figures}"
    assert figures["broken"] == 0, f"{name}: connections broke: {figures['broken_detail']}"
    assert figures["pings_lost"] == 0, f"{name}: pings lost: {figures}"
    assert after_state == before_state


@pytest.mark.parametrize("service", ["endpointd", "policyd", "routed", "flowd"])
def test_kill9_of_a_service_interrupts_nothing(node, scene, service):
    run(node, scene, lambda n: disruption.kill9(n, service), f"kill -9 {service}")


def test_kill9_of_nats_interrupts_nothing(node, scene):
    run(node, scene, lambda n: disruption.kill9(n, "nats"), "kill -9 nats-server")


def test_down_and_up_interrupts_nothing(node, scene):
    run(node, scene, disruption.down_up, "down + up")


def test_a_reboot_that_loses_bpffs_interrupts_nothing(node, scene):
    run(node, scene, disruption.reboot, "reboot (bpffs lost, KV kept)")
