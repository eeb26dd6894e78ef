"""A cluster's subjects, permissions and nats-server configuration."""
from services.runtime import natsserver
from services.runtime.config import parse_config
from services.wire import subjects

CLUSTER = """
node: n2
podCIDR: 10.61.2.0/24
stateDir: /var/lib/capillary-test-n2
nats: {host: 192.168.50.2}
cluster: {name: lab, underlayIP: 192.168.50.2, routes: [192.168.50.1:6222, 192.168.50.3:6222]}
"""


def test_node_subjects_carry_the_node_and_flows_do_not():
    assert subjects.on_node(subjects.POD_APPLY, "n2") == "capillary.node.n2.pod.apply"
    assert subjects.on_node(subjects.POD_APPLY, None) == subjects.POD_APPLY
    assert subjects.on_node(f"{subjects.ENDPOINT_EVENTS}.>", "*") == "capillary.node.*.endpoint.events.>"
    assert subjects.on_node(subjects.flows("n2", "DROPPED"), "n2") == subjects.flows("n2", "DROPPED")
    assert subjects.on_node(subjects.monitor("n2"), "n2") == subjects.monitor("n2")
    assert subjects.on_node("$KV.capillary_pods.>", "n2") == "$KV.capillary_pods.>"


def test_cluster_permissions_cover_every_node_and_nothing_unscoped():
    perms = natsserver.permissions("endpointd", cluster=True)
    assert "capillary.node.*.pod.apply" in perms["subscribe"]["allow"]
    assert subjects.POD_APPLY not in perms["subscribe"]["allow"]
    assert "capillary.node.*.identity.allocate" in perms["publish"]["allow"]
    assert natsserver.permissions("routed", cluster=True)["subscribe"]["allow"].count("capillary.node.*.nodes.list") == 1


def test_every_shared_bucket_has_an_owner():
    assert set(subjects.CLUSTER_BUCKETS) <= set(subjects.BUCKETS)
    for bucket in subjects.CLUSTER_BUCKETS:
        assert bucket in subjects.GRANTS[subjects.BUCKETS[bucket]].buckets


def test_the_server_config_routes_to_the_peers_over_tls():
    config = parse_config(CLUSTER)
    creds = {u: {"password": "p"} for u in natsserver.USERS}
    text = natsserver.render_config(config, creds)
    assert 'server_name: "capillary-n2"' in text
    assert '"nats-route://192.168.50.1:6222", "nats-route://192.168.50.3:6222"' in text
    assert 'listen: "192.168.50.2:6222"' in text and "route.pem" in text and "verify: true" in text
    connection = natsserver._connection(config)
    assert connection["servers"] == ["tls://192.168.50.2:4222", "tls://192.168.50.1:4222", "tls://192.168.50.3:4222"]


def test_a_cluster_context_names_its_node(tmp_path):
    """A client given the node's context file (the CNI plugin) calls that node's subjects."""
    import json

    from services.runtime.bus import Credentials
    config = parse_config(CLUSTER)
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps({**natsserver._connection(config), "user": "admin", "password": "p"}))
    assert Credentials.load(path).node == "n2"
    lone = parse_config("node: solo")
    path.write_text(json.dumps({**natsserver._connection(lone), "user": "admin", "password": "p"}))
    assert Credentials.load(path).node is None
