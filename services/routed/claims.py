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


@dataclass(frozen=True, slots=True)
class Claim:
    source: str
    identity: int
    tunnel_endpoint: str = ""     # remote: the underlay address of the pod's node ("" none)


def rank(source: str) -> int:
    """A source's precedence; one routed does not know ranks below every known one."""
    return PRECEDENCE.index(source) if source in PRECEDENCE else -1


class Claims:
    """Every source's claim on each prefix. A prefix one source claims (nearly all of them:
    100,000 CIDRs of a policy) holds its Claim itself, not a map of one."""

    def __init__(self) -> None:
        self._by_cidr: dict[str, Claim | dict[str, Claim]] = {}
        self._multi: set[str] = set()          # prefixes more than one source claims

    def __len__(self) -> int:
        """Prefixes claimed: the entries the map holds (one per prefix, the winner's)."""
        return len(self._by_cidr)

    def _all(self, cidr: str) -> dict[str, Claim]:
        held = self._by_cidr.get(cidr)
        if held is None:
            return {}
        return {held.source: held} if isinstance(held, Claim) else held

    def winner(self, cidr: str) -> Claim | None:
        """The claim in force for CIDR (what the map must hold), or None."""
        held = self._by_cidr.get(cidr)
        if held is None or isinstance(held, Claim):
            return held
        return held[max(held, key=rank)]

    def get(self, cidr: str, source: str) -> Claim | None:
        held = self._by_cidr.get(cidr)
        if isinstance(held, Claim):
            return held if held.source == source else None
        return None if held is None else held.get(source)

    def sources(self, cidr: str) -> dict[str, int]:
        return {s: c.identity for s, c in self._all(cidr).items()}

    def claimed(self, cidr: str) -> bool:
        return cidr in self._by_cidr

    def claim(self, cidr: str, source: str, identity: int, tunnel_endpoint: str = "") -> Claim:
        """Record SOURCE's claim on CIDR; returns the claim now in force."""
        new = Claim(source, identity, tunnel_endpoint)
        held = self._by_cidr.get(cidr)
        if held is None or (isinstance(held, Claim) and held.source == source):
            self._by_cidr[cidr] = new
            return new
        claims = self._all(cidr)
        claims[source] = new
        self._by_cidr[cidr] = claims
        self._multi.add(cidr)
        return self.winner(cidr)

    def release(self, cidr: str, source: str) -> Claim | None:
        """Drop SOURCE's claim on CIDR; returns the claim now in force, or None."""
        claims = self._all(cidr)
        claims.pop(source, None)
        if len(claims) < 2:
            self._multi.discard(cidr)
        if not claims:
            self._by_cidr.pop(cidr, None)
        elif len(claims) == 1:
            self._by_cidr[cidr] = next(iter(claims.values()))
        else:
            self._by_cidr[cidr] = claims
        return self.winner(cidr)

    def of_source(self, source: str) -> set[str]:
        return {cidr for cidr, held in self._by_cidr.items()
                if (held.source == source if isinstance(held, Claim) else source in held)}

    def shadowed(self) -> list[tuple]:
        """Every claim not in force, as (cidr, source, identity), with the tunnel endpoint
        after them when there is one: what the map cannot show."""
        out = []
        for cidr in sorted(self._multi):
            top = self.winner(cidr)
            for s, c in sorted(self._all(cidr).items()):
                if s != top.source:
                    out.append((cidr, s, c.identity, c.tunnel_endpoint) if c.tunnel_endpoint else
                               (cidr, s, c.identity))
        return out
