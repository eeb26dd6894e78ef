"""endpointd's kernel side (services.endpointd.plumbing) on a real datapath: create() leaves
the host side down, with no endpoint entry, until activate(); ensure() rebuilds a pod whose
host veth is gone."""
from __future__ import annotations

import dataclasses

import pytest

from services.endpointd.plumbing import Wiring
from services.wire.messages import PodSpec
from tests.support.twonodes import TwoNodes


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with TwoNodes(tmp_path_factory.mktemp("plumbing"), tunnel_mode=False) as two:
        yield two.a


def test_create_leaves_the_host_side_down_until_activate(node):
    spec = PodSpec(name="early", namespace="default")
    with node.entered():
        status = node.plumber.create(spec, Wiring(pod_ip="10.77.1.20", endpoint_id=21))
        try:
            assert status.identity == 0
            assert not node.plumber.nl.is_up(status.host_ifindex), "the host side is up before activate()"
            assert node.plumber.endpoints.get(status.pod_ip) is None
            assert node.plumber.attached(status.host_ifindex) == 2, "programs are attached by create()"
            status = dataclasses.replace(status, identity=321)
            node.plumber.activate(status, spec)
            assert node.plumber.nl.is_up(status.host_ifindex)
            assert node.plumber.endpoints.get(status.pod_ip).identity == 321
        finally:
            node.plumber.delete(status)


def test_ensure_rebuilds_a_pod_whose_host_veth_is_gone(node):
    pod = node.add_pod("gone", "10.77.1.30", 322, endpoint_id=31)
    node.run("ip", "link", "del", pod.status.host_ifname, check=True)
    spec = PodSpec(name="gone", namespace="default")
    with node.entered():
        status = node.plumber.ensure(spec, pod.status)
        try:
            assert (status.identity, status.created, status.netns) == (322, pod.status.created, pod.status.netns)
            assert node.plumber.nl.is_up(status.host_ifindex)
            assert node.plumber.attached(status.host_ifindex) == 2
            assert node.plumber.endpoints.get(status.pod_ip).ifindex == status.host_ifindex
        finally:
            node.plumber.delete(status)
    node.pods.remove(pod)
