"""The container entrypoint's pure parts: node config from environment variables, and where
bcc finds kernel headers."""
from __future__ import annotations

import pytest
import yaml

from services.container import env, headers
from services.runtime.config import ConfigError, NatsConfig, NodeConfig


def test_no_variables_give_the_defaults_with_an_external_nats():
    config, text = env.render({})
    assert config == NodeConfig(nats=NatsConfig(external=True))
    assert yaml.safe_load(text) == {"kind": "NodeConfig", "nats": {"external": True}}


def test_each_variable_sets_its_field_with_its_type():
    config, _ = env.render({"CAPILLARY_NODE": "edge1", "CAPILLARY_POD_CIDR": "10.9.0.0/24",
                            "CAPILLARY_MASQUERADE": "yes", "CAPILLARY_NATS_PORT": "14222",
                            "CAPILLARY_LXC_PREFIX": "cmp", "CAPILLARY_EVENTS_RING_BYTES": "0x10000",
                            "CAPILLARY_METRICS_FLOWD": "19965", "CAPILLARY_DATAPATH_MODE": "host-stack"})
    assert (config.node, config.podCIDR, config.masquerade) == ("edge1", "10.9.0.0/24", True)
    assert (config.nats.port, config.nats.external, config.metrics.flowd) == (14222, True, 19965)
    assert (config.datapath.lxcPrefix, config.datapath.mode, config.events.ringBytes) == ("cmp", "host-stack", 65536)


CLUSTER = {"CAPILLARY_NODE": "m2", "CAPILLARY_POD_CIDR": "10.201.2.0/24", "CAPILLARY_NATS_HOST": "192.168.50.2",
           "CAPILLARY_CLUSTER_NAME": "prod", "CAPILLARY_UNDERLAY_IP": "192.168.50.2",
           "CAPILLARY_CLUSTER_ROUTES": "192.168.50.1:6222, 192.168.50.3:6222", "CAPILLARY_ROUTING": "tunnel"}


def test_the_cluster_section_comes_from_the_environment():
    """compose.yaml's cluster settings (.env): the node config the containers run, with its
    nats-server (the nats container's) clustered to the peers named."""
    from services.runtime import natsserver
    config, text = env.render({**CLUSTER, "CAPILLARY_HEARTBEAT_TIMEOUT": "8", "CAPILLARY_CLUSTER_PORT": "7222"})
    cluster = config.cluster
    assert (cluster.name, cluster.underlayIP, cluster.routing, cluster.port) == ("prod", "192.168.50.2", "tunnel", 7222)
    assert [str(p) for p in cluster.peers] == ["192.168.50.1:6222", "192.168.50.3:6222"]
    assert (cluster.heartbeatInterval, cluster.heartbeatTimeout, cluster.kv_replicas) == (2, 8, 3)
    assert (config.node, config.podCIDR, config.nats.external) == ("m2", "10.201.2.0/24", True)
    assert yaml.safe_load(text)["cluster"]["routes"] == ["192.168.50.1:6222", "192.168.50.3:6222"]
    block = natsserver._cluster_block(config)
    assert "listen: " in block and "192.168.50.2:7222" in block and "nats-route://192.168.50.3:6222" in block


def test_compose_passes_every_cluster_variable_to_the_containers():
    from pathlib import Path
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose.yaml").read_text())
    passed = set(compose["x-node-environment"])
    assert {v for v, (section, _) in env.VARIABLES.items() if section == "cluster"} <= passed


def test_every_variable_names_a_real_field():
    for variable, (section, name) in env.VARIABLES.items():
        assert env._field_type(section, name) in ("str", "int", "bool", "tuple"), variable


def test_empty_variables_leave_the_base_file_alone():
    base = "kind: NodeConfig\nnode: fromfile\nmaps: {endpoints: 64}\n---\nkind: CiliumConfig\nspec: {security: {enable: false}}\n"
    config, _ = env.render({"CAPILLARY_NODE": "", "CAPILLARY_POD_CIDR": "10.8.0.0/24"}, base)
    assert (config.node, config.podCIDR, config.maps.endpoints) == ("fromfile", "10.8.0.0/24", 64)
    assert config.policy.enforcement == "never" and config.nats.external


@pytest.mark.parametrize("environ, message", [
    ({"CAPILLARY_POD_CIDR": "10.0.0.0/33"}, "CAPILLARY_POD_CIDR: podCIDR: "),
    ({"CAPILLARY_NATS_PORT": "nats"}, "CAPILLARY_NATS_PORT: 'nats' is not an integer"),
    ({"CAPILLARY_NATS_PORT": "70000"}, "CAPILLARY_NATS_PORT: nats.port: 70000 is not a port number"),
    ({"CAPILLARY_MASQUERADE": "maybe"}, "CAPILLARY_MASQUERADE: 'maybe' is not true or false"),
    ({"CAPILLARY_DATAPATH_MODE": "fast"}, "CAPILLARY_DATAPATH_MODE: datapath.mode: 'fast' is not one of"),
    ({"CAPILLARY_NODE": "Node_1"}, "CAPILLARY_NODE: node: 'Node_1' is not a DNS label"),
    ({"CAPILLARY_POD_CDIR": "10.0.0.0/24"}, "CAPILLARY_POD_CDIR: unknown variable"),
    ({**CLUSTER, "CAPILLARY_ROUTING": "vxlan"}, "CAPILLARY_ROUTING: cluster.routing: 'vxlan' is not one of"),
    ({**CLUSTER, "CAPILLARY_CLUSTER_ROUTES": "192.168.50.3:6222 192.168.50.4"},
     "CAPILLARY_CLUSTER_ROUTES: cluster.routes[1]: '192.168.50.4' is not IPV4:PORT"),
    ({**CLUSTER, "CAPILLARY_NATS_HOST": "127.0.0.1"}, "CAPILLARY_NATS_HOST: nats.host: 127.0.0.1 is loopback"),
    ({**CLUSTER, "CAPILLARY_UNDERLAY_IP": ""}, "CAPILLARY_UNDERLAY_IP: cluster.underlayIP: '' is not an IPv4"),
])
def test_a_bad_variable_is_an_error_that_names_it(environ, message):
    with pytest.raises(ConfigError) as err:
        env.render(environ)
    assert str(err.value).startswith(message)


def test_a_base_file_that_is_not_yaml_is_an_error():
    with pytest.raises(ConfigError, match="CAPILLARY_CONFIG_FILE: not valid YAML"):
        env.render({}, "kind: [")


def _headers(tmp_path, *names):
    src = tmp_path / "src"
    for name in names:
        (src / name / "include").mkdir(parents=True)
    return src


def test_the_running_kernels_own_headers_win(tmp_path):
    modules = tmp_path / "modules"
    (modules / "6.18.0" / "build" / "include").mkdir(parents=True)
    src = _headers(tmp_path, "linux-headers-6.1.0-50-amd64", "linux-headers-6.1.0-50-common")
    assert headers.ensure("6.18.0", modules, src, tmp_path / "none") == f"kernel headers: {modules}/6.18.0/build"


def test_kheaders_come_next(tmp_path):
    kheaders = tmp_path / "kheaders.tar.xz"
    kheaders.touch()
    assert headers.ensure("6.18.0", tmp_path / "modules", tmp_path / "src", kheaders).endswith(str(kheaders))


def test_else_the_images_headers_are_linked_as_on_a_host(tmp_path):
    modules = tmp_path / "modules"
    src = _headers(tmp_path, "linux-headers-6.1.0-50-amd64", "linux-headers-6.1.0-50-common")
    for _ in range(2):   # idempotent: a restarted container links again
        headers.ensure("6.18.0", modules, src, tmp_path / "none")
    assert (modules / "6.18.0" / "build").resolve() == src / "linux-headers-6.1.0-50-amd64"
    assert (modules / "6.18.0" / "source").resolve() == src / "linux-headers-6.1.0-50-common"


def test_no_headers_anywhere_is_a_clear_error(tmp_path):
    with pytest.raises(headers.HeadersError, match="no kernel headers under"):
        headers.ensure("6.18.0", tmp_path / "modules", tmp_path / "src", tmp_path / "none")


def test_a_cluster_nodes_healthchecks_ask_its_own_services():
    """In a cluster the services answer health on their node's subject (Bus.serve scopes
    it): the containers' healthchecks must ask that one, not the bare subject."""
    from services.container.__main__ import health_subject
    from services.wire import subjects
    lone, _ = env.render({})
    member, _ = env.render(CLUSTER)
    assert health_subject(lone, "routed") == subjects.health("routed")
    assert health_subject(member, "routed") == subjects.on_node(subjects.health("routed"), "m2") != \
        subjects.health("routed")
