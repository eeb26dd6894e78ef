"""IPAM: every address goes to at most one holder; network, router and broadcast never do."""
from __future__ import annotations

import ipaddress

import pytest

from services.endpointd.ipam import IPAM, PoolExhausted

# 10.1.0.0/29: .0 network, .1 router, .7 broadcast -> .2 .. .6 assignable
CIDR = "10.1.0.0/29"
ASSIGNABLE = [f"10.1.0.{n}" for n in range(2, 7)]


def drain(ipam: IPAM) -> list[str]:
    got = []
    while True:
        try:
            got.append(ipam.allocate())
        except PoolExhausted:
            return got


def test_router_is_the_first_address():
    assert str(IPAM(CIDR).router) == "10.1.0.1"


def test_fills_the_pool_in_order_without_reserved_addresses():
    ipam = IPAM(CIDR)
    assert ipam.capacity == 5
    assert drain(ipam) == ASSIGNABLE
    assert ipam.used == 5


@pytest.mark.parametrize("cidr", ["10.1.0.0/24", "192.168.7.16/28", "172.16.0.0/30"])
def test_never_hands_out_one_address_twice_or_a_reserved_one(cidr):
    ipam = IPAM(cidr)
    net = ipaddress.IPv4Network(cidr)
    got = drain(ipam)
    assert len(got) == len(set(got)) == net.num_addresses - 3
    reserved = {net.network_address, net.network_address + 1, net.broadcast_address}
    assert not reserved & {ipaddress.IPv4Address(ip) for ip in got}
    assert all(ipaddress.IPv4Address(ip) in net for ip in got)


def test_slash_30_has_exactly_one_pod_address():
    ipam = IPAM("10.9.0.4/30")
    assert ipam.allocate() == "10.9.0.6"
    with pytest.raises(PoolExhausted):
        ipam.allocate()


@pytest.mark.parametrize("cidr", ["10.9.0.0/31", "10.9.0.0/32"])
def test_pools_too_small_for_a_pod_are_exhausted_at_once(cidr):
    with pytest.raises(PoolExhausted):
        IPAM(cidr).allocate()


def test_accepts_a_larger_prefix_than_config_allows():
    # NodeConfig refuses podCIDRs smaller than /29; IPAM itself takes what it is given.
    assert IPAM("10.9.0.8/30").capacity == 1


def test_rejects_a_cidr_with_host_bits():
    with pytest.raises(ValueError):
        IPAM("10.1.0.3/29")


def test_exhaustion_names_the_cidr():
    ipam = IPAM(CIDR)
    drain(ipam)
    with pytest.raises(PoolExhausted, match=r"10\.1\.0\.0/29"):
        ipam.allocate()


def test_release_frees_the_address_for_reuse():
    ipam = IPAM(CIDR)
    drain(ipam)
    ipam.release("10.1.0.4")
    assert not ipam.in_use("10.1.0.4")
    assert ipam.used == 4
    assert ipam.allocate() == "10.1.0.4"
    assert ipam.in_use("10.1.0.4")


def test_round_robin_does_not_reuse_a_released_address_at_once():
    ipam = IPAM(CIDR)
    first = ipam.allocate()
    ipam.release(first)
    assert ipam.allocate() != first


def test_round_robin_wraps_around_to_released_addresses():
    ipam = IPAM(CIDR)
    drain(ipam)
    ipam.release("10.1.0.3")
    ipam.release("10.1.0.2")
    # the cursor is past .6: it wraps to the start of the pool, then moves on
    assert [ipam.allocate(), ipam.allocate()] == ["10.1.0.2", "10.1.0.3"]


def test_allocate_skips_claimed_addresses():
    ipam = IPAM(CIDR)
    ipam.claim("10.1.0.2")
    ipam.claim("10.1.0.4")
    assert drain(ipam) == ["10.1.0.3", "10.1.0.5", "10.1.0.6"]


def test_claim_rejects_an_address_already_taken():
    ipam = IPAM(CIDR)
    ip = ipam.allocate()
    with pytest.raises(ValueError, match="already assigned"):
        ipam.claim(ip)


@pytest.mark.parametrize("ip", ["10.1.0.0", "10.1.0.1", "10.1.0.7", "10.1.0.8", "10.2.0.3"])
def test_claim_rejects_reserved_and_out_of_range_addresses(ip):
    ipam = IPAM(CIDR)
    with pytest.raises(ValueError, match="not an assignable address"):
        ipam.claim(ip)
    assert ipam.used == 0


def test_release_of_an_unknown_address_changes_nothing():
    ipam = IPAM(CIDR)
    ip = ipam.allocate()
    ipam.release("10.1.0.5")
    assert ipam.used == 1 and ipam.in_use(ip)
