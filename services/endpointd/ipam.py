"""Pod IP address management for one node's pod CIDR. Pure logic, no I/O.

Invariant: an address is in ``_used`` from allocate() until release(); the network,
broadcast and router addresses are never handed out. State is rebuilt at start-up from the
pods recorded in KV (restore()), so the allocator itself stores nothing.
"""
from __future__ import annotations

import ipaddress


class PoolExhausted(Exception):
    pass


class IPAM:
    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr, strict=True)
        self.router = self.network.network_address + 1
        self._reserved = {self.network.network_address, self.router, self.network.broadcast_address}
        self._used: set[ipaddress.IPv4Address] = set()
        self._first = int(self.router) + 1
        self._last = int(self.network.broadcast_address) - 1
        self._next = self._first

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    @property
    def used(self) -> int:
        return len(self._used)

    def allocate(self) -> str:
        """The next free address, round-robin so a released address is not reused at once."""
        if len(self._used) >= self.capacity:
            raise PoolExhausted(f"pod CIDR {self.network} is exhausted ({self.capacity} addresses in use)")
        span = self.capacity
        for step in range(span):
            cand = ipaddress.IPv4Address(self._first + (self._next - self._first + step) % span)
            if cand not in self._used:
                self._used.add(cand)
                self._next = int(cand) + 1 if int(cand) < self._last else self._first
                return str(cand)
        raise PoolExhausted(f"pod CIDR {self.network} is exhausted")

    def claim(self, ip: str) -> None:
        """Mark IP as used (restore from KV); refuses addresses outside the pool or taken."""
        addr = ipaddress.IPv4Address(ip)
        if addr not in self.network or addr in self._reserved:
            raise ValueError(f"{ip} is not an assignable address of {self.network}")
        if addr in self._used:
            raise ValueError(f"{ip} is already assigned")
        self._used.add(addr)

    def release(self, ip: str) -> None:
        self._used.discard(ipaddress.IPv4Address(ip))

    def addresses(self) -> frozenset[ipaddress.IPv4Address]:
        """Every address handed out and not released."""
        return frozenset(self._used)

    def in_use(self, ip: str) -> bool:
        return ipaddress.IPv4Address(ip) in self._used
