"""The few iptables rules pods need, in chains of our own. Nothing else is touched.

FORWARD jumps to CAPILLARY-FORWARD (inserted first, so a host FORWARD policy of DROP, as
dockerd sets, does not cut pods off); CAPILLARY-FORWARD accepts traffic from and to the pod
CIDR. With masquerade on, nat POSTROUTING jumps to CAPILLARY-POSTROUTING, which masquerades
pod traffic leaving the node.
"""
from __future__ import annotations

import subprocess

FORWARD_CHAIN = "CAPILLARY-FORWARD"
NAT_CHAIN = "CAPILLARY-POSTROUTING"


class IptablesError(RuntimeError):
    pass


def _ipt(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise IptablesError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


def _ensure_chain(table: str, chain: str) -> None:
    if not _ipt("-t", table, "-n", "-L", chain, check=False):
        _ipt("-t", table, "-N", chain)


def _ensure_rule(table: str, chain: str, rule: list[str], insert: bool = False) -> None:
    if not _ipt("-t", table, "-C", chain, *rule, check=False):
        _ipt("-t", table, "-I" if insert else "-A", chain, *rule)


def _remove_rule(table: str, chain: str, rule: list[str]) -> None:
    while _ipt("-t", table, "-D", chain, *rule, check=False):
        pass


def _remove_chain(table: str, chain: str) -> None:
    if _ipt("-t", table, "-n", "-L", chain, check=False):
        _ipt("-t", table, "-F", chain)
        _ipt("-t", table, "-X", chain)


def ensure(pod_cidr: str, router_device: str, masquerade: bool) -> None:
    _ensure_chain("filter", FORWARD_CHAIN)
    _ensure_rule("filter", FORWARD_CHAIN, ["-s", pod_cidr, "-j", "ACCEPT", "-m", "comment", "--comment", "capillary: from pods"])
    _ensure_rule("filter", FORWARD_CHAIN, ["-d", pod_cidr, "-j", "ACCEPT", "-m", "comment", "--comment", "capillary: to pods"])
    _ensure_rule("filter", "FORWARD", ["-j", FORWARD_CHAIN], insert=True)
    jump = ["-j", NAT_CHAIN]
    if masquerade:
        _ensure_chain("nat", NAT_CHAIN)
        _ensure_rule("nat", NAT_CHAIN, ["-s", pod_cidr, "!", "-d", pod_cidr, "!", "-o", router_device,
                                        "-j", "MASQUERADE", "-m", "comment", "--comment", "capillary: pods leaving the node"])
        _ensure_rule("nat", "POSTROUTING", jump)
    else:
        _remove_rule("nat", "POSTROUTING", jump)
        _remove_chain("nat", NAT_CHAIN)


def remove() -> None:
    _remove_rule("filter", "FORWARD", ["-j", FORWARD_CHAIN])
    _remove_chain("filter", FORWARD_CHAIN)
    _remove_rule("nat", "POSTROUTING", ["-j", NAT_CHAIN])
    _remove_chain("nat", NAT_CHAIN)


def forward_packets(pod_cidr: str) -> int:
    """Packets CAPILLARY-FORWARD has accepted: proof of traffic through the host stack."""
    proc = subprocess.run(["iptables", "-w", "-t", "filter", "-n", "-v", "-x", "-L", FORWARD_CHAIN],
                          capture_output=True, text=True)
    total = 0
    for line in proc.stdout.splitlines()[2:]:
        parts = line.split()
        if parts and parts[0].isdigit():
            total += int(parts[0])
    return total
