"""Tunnel mode's pure parts: remote pod entries, the pod MTU, remote claims in the ipcache."""
import pytest

from services.datapath.maps.ipcache import info_for, tunnel_endpoint_of
from services.routed import tunnel
from services.routed.claims import Claim, Claims
from services.runtime.bus import ServiceError


def test_a_remote_entry_is_one_address_with_a_pod_identity_and_a_node():
    assert tunnel.remote_entry("10.1.2.3", 300, "192.168.1.2") == ("10.1.2.3/32", 300, "192.168.1.2")
    assert tunnel.remote_entry("10.1.2.3/32", 300, "") == ("10.1.2.3/32", 300, "")


@pytest.mark.parametrize("pod_ip, identity, node_ip, field", [
    ("10.1.2.0/24", 300, "192.168.1.2", "pod_ip"),
    ("10.1.2.300", 300, "192.168.1.2", "pod_ip"),
    ("10.1.2.3", 0, "192.168.1.2", "identity"),
    ("10.1.2.3", 1 << 24, "192.168.1.2", "identity"),       # does not fit the VNI
    ("10.1.2.3", True, "192.168.1.2", "identity"),
    ("10.1.2.3", 300, "0.0.0.0", "node_ip"),
    ("10.1.2.3", 300, "127.0.0.1", "node_ip"),
    ("10.1.2.3", 300, "node-b", "node_ip"),
])
def test_a_bad_remote_entry_names_its_field(pod_ip, identity, node_ip, field):
    with pytest.raises(ServiceError, match=f"^{field}:"):
        tunnel.remote_entry(pod_ip, identity, node_ip)


def test_the_pod_mtu_leaves_room_for_vxlan():
    assert tunnel.pod_mtu(1500) == 1450
    assert tunnel.pod_mtu(9000) == 8950
    with pytest.raises(ValueError, match="underlay MTU"):
        tunnel.pod_mtu(600)


def test_the_map_value_carries_the_tunnel_endpoint():
    assert tunnel_endpoint_of(info_for(300, 5, "192.168.1.2")) == "192.168.1.2"
    assert tunnel_endpoint_of(info_for(300, 5)) == ""
    with pytest.raises(ValueError, match="tunnel_endpoint"):
        info_for(300, 5, "0.0.0.0")


def test_a_remote_claim_keeps_its_node_and_ranks_below_a_local_pod():
    c = Claims()
    assert c.claim("10.1.2.3/32", "remote", 300, "192.168.1.2") == Claim("remote", 300, "192.168.1.2")
    assert c.claim("10.1.2.3/32", "endpoint", 400) == Claim("endpoint", 400)
    assert c.shadowed() == [("10.1.2.3/32", "remote", 300, "192.168.1.2")]
    assert c.release("10.1.2.3/32", "endpoint") == Claim("remote", 300, "192.168.1.2")
    assert c.claim("10.1.2.3/32", "cidr-policy", 16777217) == Claim("remote", 300, "192.168.1.2")
    assert c.shadowed() == [("10.1.2.3/32", "cidr-policy", 16777217)]
