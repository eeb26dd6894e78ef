from pathlib import Path

import pytest
import yaml

from services.datapath.maps.conntrack import ConntrackMap
from tests.e2e.policy_model import Model
from tests.support.node import Node


def _node(tmp_path_factory, **kwargs):
    node = Node(tmp_path_factory.mktemp("node"), **kwargs)
    try:
        node.up()
        yield node
    finally:
        node.purge()
        left = node.leftovers()
        assert not left, f"the node left things behind: {left}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A running node (redirect mode) shared by one test module."""
    yield from _node(tmp_path_factory)


@pytest.fixture(scope="module")
def host_stack_node(tmp_path_factory):
    """A running node in host-stack mode, with a pod CIDR of its own (from its random tag, as
    every test node's), so concurrent runs of this fixture never share one."""
    yield from _node(tmp_path_factory, mode="host-stack")


@pytest.fixture(scope="module")
def small_ct_node(tmp_path_factory):
    """A node whose conntrack map holds 1024 entries, swept only when endpointd starts."""
    yield from _node(tmp_path_factory, maps={"conntrack": 1024}, datapath={"conntrackGCInterval": 86400})


@pytest.fixture(scope="module")
def big_tcp_node(tmp_path_factory):
    """A node whose pods' veths carry 192 KiB IPv4 TCP packets (datapath.bigTCP)."""
    yield from _node(tmp_path_factory, datapath={"bigTCP": True})


@pytest.fixture(scope="module")
def tiny_ring_node(tmp_path_factory):
    """A node whose event ring holds a couple of dozen events and that traces every packet."""
    yield from _node(tmp_path_factory, events={"ringBytes": 4096, "aggregation": "none"})


@pytest.fixture
def policies(node):
    """Apply policies for one test; delete them afterwards, with the connections the test
    opened. Those stay established under the next test's policies, as they should, and a probe
    of the next test whose UDP source port happens to be one of them would ride on it."""
    applied = []

    def apply(*docs: dict) -> None:
        for doc in docs:
            node.apply(yaml.safe_dump(doc))
            applied.append(doc)

    yield apply
    for doc in applied:
        kind = {"NetworkPolicy": "networkpolicy", "CiliumNetworkPolicy": "cnp",
                "CiliumClusterwideNetworkPolicy": "ccnp"}[doc["kind"]]
        ns = doc["metadata"].get("namespace", "default")
        node.cli("delete", kind, doc["metadata"]["name"], "-n", ns)
    table = ConntrackMap(Path(node.bpf_root))
    try:
        table.flush()
    finally:
        table.close()


@pytest.fixture(scope="module")
def model(node):
    """The x/y/z policy model (nine pods with servers) on the module's node."""
    m = Model(node)
    try:
        yield m
    finally:
        m.close()
