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

import os

import pytest

from tests.support import disruption

ROUNDS = int(os.environ.get("CAPILLARY_DISRUPTION_ROUNDS", "1"))


@pytest.fixture(scope="module")
def scene(node):
    with disruption.scene(node) as sc:
        yield sc


def run(node, scene, disrupt, name: str) -> None:
    disruption.run(node, scene, disrupt, name, ROUNDS)


@pytest.mark.parametrize("service", ["endpointd", "policyd", "routed", "flowd"])
def test_kill9_of_a_service_interrupts_nothing(node, scene, service):
    run(node, scene, lambda n: disruption.kill9(n, service), f"kill -9 {service}")


def test_kill9_of_nats_interrupts_nothing(node, scene):
    run(node, scene, lambda n: disruption.kill9(n, "nats"), "kill -9 nats-server")


def test_down_and_up_interrupts_nothing(node, scene):
    run(node, scene, disruption.down_up, "down + up")


def test_a_reboot_that_loses_bpffs_interrupts_nothing(node, scene):
    run(node, scene, disruption.reboot, "reboot (bpffs lost, KV kept)")
