"""Cluster membership from heartbeats, and what a node holds for its alive peers."""
from services.routed.membership import Membership, RemotePod, pods_for, routes_for
from services.wire.cluster import NodeRecord, RemoteEndpoint


def rec(name, cidr, beat=1, ip=None):
    return NodeRecord(name, ip or f"172.31.9.{name[-1]}", cidr, "native", beat)


def test_a_peer_lives_while_its_beat_changes():
    m = Membership("n1", timeout=6)
    m.observe({"n1": rec("n1", "10.1.1.0/24"), "n2": rec("n2", "10.1.2.0/24")}, now=100)
    assert set(m.alive(105)) == {"n2"}                  # never ourselves
    m.observe({"n2": rec("n2", "10.1.2.0/24", beat=1)}, now=105)     # the same beat: no news
    assert m.alive(107) == {}
    m.observe({"n2": rec("n2", "10.1.2.0/24", beat=2)}, now=108)     # back
    assert set(m.alive(110)) == {"n2"} and m.age("n2", 110) == 2


def test_a_record_gone_is_a_node_gone():
    m = Membership("n1", timeout=6)
    m.observe({"n2": rec("n2", "10.1.2.0/24")}, now=1)
    m.observe({}, now=2)
    assert m.alive(2) == {} and m.age("n2", 2) is None


def test_routes_refuse_overlaps():
    alive = {"n2": rec("n2", "10.1.2.0/24"), "n3": rec("n3", "10.1.0.0/16"),
             "n4": rec("n4", "10.1.4.0/24"), "n5": rec("n5", "10.9.0.0/24"), "n6": rec("n6", "10.9.0.0/24")}
    # n3 overlaps our own (and n2, n4); n5 and n6 claim one CIDR: none of them is routed
    assert routes_for(alive, "10.1.1.0/24") == {}
    del alive["n3"], alive["n6"]
    assert routes_for(alive, "10.1.1.0/24") == {"10.1.2.0/24": "172.31.9.2", "10.1.4.0/24": "172.31.9.4",
                                                "10.9.0.0/24": "172.31.9.5"}


def test_pods_only_of_alive_routed_peers_inside_their_cidr():
    alive = {"n2": rec("n2", "10.1.2.0/24")}
    routes = routes_for(alive, "10.1.1.0/24")
    eps = [RemoteEndpoint("10.1.2.5", 300, "n2"), RemoteEndpoint("10.1.3.5", 301, "n2"),
           RemoteEndpoint("10.1.3.6", 302, "n3")]
    assert pods_for(alive, eps, routes) == {"10.1.2.5/32": RemotePod(300, "n2", "172.31.9.2")}
