"""The node config's cluster section: a valid one, and every error naming its field."""
import pytest

from services.runtime.config import ConfigError, parse_config

GOOD = """
node: n2
podCIDR: 10.61.2.0/24
nats: {host: 192.168.50.2}
cluster:
  name: lab
  underlayIP: 192.168.50.2
  routes: [192.168.50.1:6222, nats-route://192.168.50.3:6222]
  routing: tunnel
  heartbeatTimeout: 6
"""


def test_a_cluster_node():
    config = parse_config(GOOD)
    cluster = config.cluster
    assert cluster.enabled and cluster.routing == "tunnel"
    assert [str(p) for p in cluster.peers] == ["192.168.50.1:6222", "192.168.50.3:6222"]
    assert cluster.size == 3 and cluster.kv_replicas == 3
    assert (cluster.heartbeatInterval, cluster.heartbeatTimeout) == (2, 6)


def test_no_cluster_section_is_a_lone_node():
    config = parse_config("node: solo")
    assert not config.cluster.enabled and config.cluster.kv_replicas == 1


def test_replicas_never_exceed_the_nodes():
    two = parse_config(GOOD.replace(", nats-route://192.168.50.3:6222", ""))
    assert two.cluster.kv_replicas == 2
    one = parse_config(GOOD.replace("routes: [192.168.50.1:6222, nats-route://192.168.50.3:6222]", "routes: []"))
    assert one.cluster.kv_replicas == 1


def _with(**changes) -> str:
    fields = {"name": "lab", "underlayIP": "192.168.50.2", "routes": "[192.168.50.1:6222]"}
    fields.update(changes)
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items() if v is not None)
    return f"node: n2\npodCIDR: 10.61.2.0/24\nnats: {{host: 0.0.0.0}}\ncluster:\n{body}\n"


@pytest.mark.parametrize("changes, field", [
    ({"name": "'bad name'"}, "cluster.name"),
    ({"name": "''"}, "cluster.name"),
    ({"underlayIP": None}, "cluster.underlayIP"),
    ({"underlayIP": "not-an-ip"}, "cluster.underlayIP"),
    ({"underlayIP": "127.0.0.1"}, "cluster.underlayIP"),
    ({"underlayIP": "10.61.2.9"}, "cluster.underlayIP"),     # inside the pod CIDR
    ({"routes": "192.168.50.1:6222"}, "cluster.routes"),
    ({"routes": "[192.168.50.1]"}, "cluster.routes[0]"),
    ({"routes": "[host.example:6222]"}, "cluster.routes[0]"),
    ({"routes": "[192.168.50.1:70000]"}, "cluster.routes[0]"),
    ({"routes": "[192.168.50.2:6222]"}, "cluster.routes"),      # this node itself
    ({"routes": "[192.168.50.1:6222, 192.168.50.1:6222]"}, "cluster.routes"),
    ({"routing": "overlay"}, "cluster.routing"),
    ({"port": 0}, "cluster.port"),
    ({"heartbeatInterval": 0}, "cluster.heartbeatInterval"),
    ({"heartbeatTimeout": "soon"}, "cluster.heartbeatTimeout"),
    ({"heartbeatInterval": 5, "heartbeatTimeout": 9}, "cluster.heartbeatTimeout"),
    ({"replicas": 7}, "cluster.replicas"),
    ({"bogus": 1}, "cluster.bogus"),
])
def test_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        parse_config(_with(**changes))
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_a_cluster_node_must_listen_beyond_loopback():
    with pytest.raises(ConfigError, match=r"^nats.host: 127.0.0.1 is loopback"):
        parse_config(_with().replace("nats: {host: 0.0.0.0}", "nats: {port: 4222}"))


def test_big_tcp_goes_with_native_routing_only():
    native = parse_config(_with(routing="native") + "datapath: {bigTCP: true}\n")
    assert native.datapath.bigTCP
    with pytest.raises(ConfigError, match=r"^datapath.bigTCP: not with cluster.routing: tunnel"):
        parse_config(_with(routing="tunnel") + "datapath: {bigTCP: true}\n")
    with pytest.raises(ConfigError, match=r"^datapath.bigTCP: expected bool"):
        parse_config(_with() + "datapath: {bigTCP: 'yes'}\n")
    assert not parse_config(_with(routing="tunnel")).datapath.bigTCP
