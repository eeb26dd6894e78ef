"""The conntrack owner's pure rules: when an entry is expired (as the datapath's ct_expired)
and when it is an orphan (a pod address no pod holds)."""
import ipaddress

import pytest

from services.datapath.maps.conntrack import NS, CtEntry, CtKey, Orphans, expired
from services.datapath.numbers import CT_CLOSING, CT_LIFETIME_CLOSING, CT_LIFETIME_OTHER, CT_LIFETIME_TCP

PODS = ipaddress.IPv4Network("10.200.0.0/24")
ROUTER = ipaddress.IPv4Address("10.200.0.1")


def key(src: str, dst: str) -> CtKey:
    k = CtKey(protocol=6)
    k.saddr[:] = ipaddress.IPv4Address(src).packed
    k.daddr[:] = ipaddress.IPv4Address(dst).packed
    return k


@pytest.mark.parametrize("proto, flags, lifetime", [(6, 0, CT_LIFETIME_TCP), (6, CT_CLOSING, CT_LIFETIME_CLOSING),
                                                    (17, 0, CT_LIFETIME_OTHER), (1, CT_CLOSING, CT_LIFETIME_OTHER)])
def test_an_entry_expires_after_its_protocols_lifetime(proto, flags, lifetime):
    entry = CtEntry(last_seen=1000, flags=flags)
    assert not expired(proto, entry, 1000 + lifetime * NS)
    assert expired(proto, entry, 1000 + lifetime * NS + 1)


def test_an_orphan_names_a_pod_address_no_pod_holds():
    orphaned = Orphans(PODS, ROUTER, {ipaddress.IPv4Address("10.200.0.2")})
    assert not orphaned(key("10.200.0.2", "8.8.8.8"))
    assert not orphaned(key("10.200.0.1", "10.200.0.2"))      # the router is the host
    assert not orphaned(key("192.168.1.1", "8.8.8.8"))        # no pod address at all
    assert not orphaned(key("10.201.0.9", "8.8.8.8"))         # outside the pod CIDR
    assert orphaned(key("10.200.0.9", "8.8.8.8"))
    assert orphaned(key("10.200.0.2", "10.200.0.9"))
