"""ipcache claims: every source's claim is kept, the highest is in force."""
import pytest

from services.routed.claims import PRECEDENCE, Claim, Claims
from services.routed.service import SOURCES


def test_every_source_has_a_rank_and_a_map_flag():
    assert set(PRECEDENCE) == set(SOURCES)


def test_a_lower_claim_never_overwrites_a_higher_one():
    c = Claims()
    assert c.claim("10.0.0.5/32", "endpoint", 300) == Claim("endpoint", 300)
    assert c.claim("10.0.0.5/32", "cidr-policy", 16777217) == Claim("endpoint", 300)
    assert c.shadowed() == [("10.0.0.5/32", "cidr-policy", 16777217)]


def test_a_higher_claim_takes_over_and_keeps_the_lower_one():
    c = Claims()
    c.claim("10.0.0.1/32", "cidr-policy", 16777217)
    assert c.claim("10.0.0.1/32", "node", 1) == Claim("node", 1)
    assert c.sources("10.0.0.1/32") == {"cidr-policy": 16777217, "node": 1}


@pytest.mark.parametrize("first, second", [("endpoint", "cidr-policy"), ("cidr-policy", "endpoint")])
def test_releasing_the_claim_in_force_restores_the_other(first, second):
    c = Claims()
    c.claim("10.0.0.5/32", first, 1000 + PRECEDENCE.index(first))
    c.claim("10.0.0.5/32", second, 1000 + PRECEDENCE.index(second))
    assert c.release("10.0.0.5/32", "endpoint") == Claim("cidr-policy", 1000)
    assert c.shadowed() == []
    assert c.release("10.0.0.5/32", "cidr-policy") is None
    assert c.winner("10.0.0.5/32") is None and c.of_source("cidr-policy") == set()


def test_releasing_a_shadowed_claim_changes_nothing_in_force():
    c = Claims()
    c.claim("0.0.0.0/0", "reserved", 2)
    c.claim("0.0.0.0/0", "cidr-policy", 16777300)
    assert c.release("0.0.0.0/0", "cidr-policy") == Claim("reserved", 2)
