"""Who claims each ipcache prefix, and whose claim is in force. Pure: routed writes the map.

Several sources may name one prefix: a pod's /32 (endpoint), a node address (node), the
world default (reserved), a policy's toCIDR (cidr-policy) and a pod on another node
(remote) can all be 10.0.0.5/32. As in Cilium's ipcache, sources have a precedence, every
source's claim is kept, and the map holds the highest one; a lower claim never overwrites a
higher one, and releasing the claim in force brings back the next one down.
"""
from __future__ import annotations

from dataclasses import dataclass

# Lowest first. Shared with the map's flags through services.routed.service.SOURCES. A
# pod on another node ranks below this node's own pods and addresses: a stale announcement
# from elsewhere never takes over an address in use here.
# "remote": another node's pod, learnt from the cluster (services.routed.cluster).
PRECEDENCE = ("cidr-policy", "remote", "endpoint", "node", "reserved")


@dataclass(frozen=True)
class Claim:
    source: str
    identity: int
    tunnel_endpoint: str = ""     # remote: the underlay address of the pod's node ("" none)


def rank(source: str) -> int:
    """A source's precedence; one routed does not know ranks below every known one."""
    return PRECEDENCE.index(source) if source in PRECEDENCE else -1


class Claims:
    def __init__(self) -> None:
        self._by_cidr: dict[str, dict[str, Claim]] = {}
        self._multi: set[str] = set()          # prefixes more than one source claims

    def __len__(self) -> int:
        """Prefixes claimed: the entries the map holds (one per prefix, the winner's)."""
        return len(self._by_cidr)

    def winner(self, cidr: str) -> Claim | None:
        """The claim in force for CIDR (what the map must hold), or None."""
        claims = self._by_cidr.get(cidr)
        if not claims:
            return None
        return claims[max(claims, key=rank)]

    def get(self, cidr: str, source: str) -> Claim | None:
        return self._by_cidr.get(cidr, {}).get(source)

    def sources(self, cidr: str) -> dict[str, int]:
        return {s: c.identity for s, c in self._by_cidr.get(cidr, {}).items()}

    def claim(self, cidr: str, source: str, identity: int, tunnel_endpoint: str = "") -> Claim:
        """Record SOURCE's claim on CIDR; returns the claim now in force."""
        claims = self._by_cidr.setdefault(cidr, {})
        claims[source] = Claim(source, identity, tunnel_endpoint)
        if len(claims) > 1:
            self._multi.add(cidr)
        return self.winner(cidr)

    def release(self, cidr: str, source: str) -> Claim | None:
        """Drop SOURCE's claim on CIDR; returns the claim now in force, or None."""
        claims = self._by_cidr.get(cidr, {})
        claims.pop(source, None)
        if len(claims) < 2:
            self._multi.discard(cidr)
        if not claims:
            self._by_cidr.pop(cidr, None)
        return self.winner(cidr)

    def of_source(self, source: str) -> set[str]:
        return {cidr for cidr, claims in self._by_cidr.items() if source in claims}

    def shadowed(self) -> list[tuple]:
        """Every claim not in force, as (cidr, source, identity), with the tunnel endpoint
        after them when there is one: what the map cannot show."""
        out = []
        for cidr in sorted(self._multi):
            top = self.winner(cidr)
            for s, c in sorted(self._by_cidr[cidr].items()):
                if s != top.source:
                    out.append((cidr, s, c.identity, c.tunnel_endpoint) if c.tunnel_endpoint else
                               (cidr, s, c.identity))
        return out
