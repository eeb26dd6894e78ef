"""Who claims each ipcache prefix, and whose claim is in force. Pure: routed writes the map.

Several sources may name one prefix: a pod's /32 (endpoint), a node address (node), the
world default (reserved) and a policy's toCIDR (cidr-policy) can all be 10.0.0.5/32. As in
Cilium's ipcache, sources have a precedence, every source's claim is kept, and the map holds
the highest one; a lower claim never overwrites a higher one, and releasing the claim in
force brings back the next one down.
"""
from __future__ import annotations

from dataclasses import dataclass

# Lowest first. Shared with the map's flags through services.routed.service.SOURCES.
# "remote": another node's pod, learnt from the cluster (services.routed.cluster).
PRECEDENCE = ("cidr-policy", "remote", "endpoint", "node", "reserved")


@dataclass(frozen=True)
class Claim:
    source: str
    identity: int


def rank(source: str) -> int:
    """A source's precedence; one routed does not know ranks below every known one."""
    return PRECEDENCE.index(source) if source in PRECEDENCE else -1


class Claims:
    def __init__(self) -> None:
        self._by_cidr: dict[str, dict[str, int]] = {}

    def winner(self, cidr: str) -> Claim | None:
        """The claim in force for CIDR (what the map must hold), or None."""
        claims = self._by_cidr.get(cidr)
        if not claims:
            return None
        source = max(claims, key=rank)
        return Claim(source, claims[source])

    def sources(self, cidr: str) -> dict[str, int]:
        return dict(self._by_cidr.get(cidr, {}))

    def claim(self, cidr: str, source: str, identity: int) -> Claim:
        """Record SOURCE's claim on CIDR; returns the claim now in force."""
        self._by_cidr.setdefault(cidr, {})[source] = identity
        return self.winner(cidr)

    def release(self, cidr: str, source: str) -> Claim | None:
        """Drop SOURCE's claim on CIDR; returns the claim now in force, or None."""
        claims = self._by_cidr.get(cidr, {})
        claims.pop(source, None)
        if not claims:
            self._by_cidr.pop(cidr, None)
        return self.winner(cidr)

    def of_source(self, source: str) -> set[str]:
        return {cidr for cidr, claims in self._by_cidr.items() if source in claims}

    def shadowed(self) -> list[tuple[str, str, int]]:
        """Every claim not in force, as (cidr, source, identity): what the map cannot show."""
        out = []
        for cidr in sorted(self._by_cidr):
            top = self.winner(cidr)
            out += [(cidr, s, i) for s, i in sorted(self._by_cidr[cidr].items()) if s != top.source]
        return out
