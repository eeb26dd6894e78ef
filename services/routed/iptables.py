"""The few iptables rules pods need, in chains of our own. Nothing else is touched.

FORWARD jumps to CAPILLARY-FORWARD (inserted first, so a host FORWARD policy of DROP, as
dockerd sets, does not cut pods off); CAPILLARY-FORWARD accepts traffic from and to the pod
CIDR. With masquerade on, nat POSTROUTING jumps to CAPILLARY-POSTROUTING, which masquerades
pod traffic leaving the node. In tunnel mode, raw PREROUTING and OUTPUT jump to
CAPILLARY-NOTRACK, which exempts the overlay's UDP port from connection tracking (as Cilium
does for its own traffic): where conntrack is active in the node's namespace (masquerade, a
container engine's rules), every encapsulated packet would otherwise be looked up in (and
kept in) the conntrack table on both nodes. The overlay carries its own conntrack
(bpf/lib/conntrack.h), and nothing in the host stack needs to know these packets' state.
The rule does not turn conntrack on in a namespace where nothing else did.
"""
from __future__ import annotations

import subprocess

FORWARD_CHAIN = "CAPILLARY-FORWARD"
NAT_CHAIN = "CAPILLARY-POSTROUTING"
NOTRACK_CHAIN = "CAPILLARY-NOTRACK"
NOTRACK_PARENTS = ("PREROUTING", "OUTPUT")     # packets received, and packets the node sends


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
    """Another node on this host may remove (or refill) the chain meanwhile: gone is success,
    and a chain in use again stays."""
    if _ipt("-t", table, "-n", "-L", chain, check=False):
        _ipt("-t", table, "-F", chain, check=False)
        _ipt("-t", table, "-X", chain, check=False)


def _forward_rules(pod_cidr: str) -> list[list[str]]:
    return [["-s", pod_cidr, "-j", "ACCEPT", "-m", "comment", "--comment", "capillary: from pods"],
            ["-d", pod_cidr, "-j", "ACCEPT", "-m", "comment", "--comment", "capillary: to pods"]]


def _nat_rule(pod_cidr: str, router_device: str) -> list[str]:
    return ["-s", pod_cidr, "!", "-d", pod_cidr, "!", "-o", router_device, "-j", "MASQUERADE",
            "-m", "comment", "--comment", "capillary: pods leaving the node"]


def ensure(pod_cidr: str, router_device: str, masquerade: bool) -> None:
    _ensure_chain("filter", FORWARD_CHAIN)
    for rule in _forward_rules(pod_cidr):
        _ensure_rule("filter", FORWARD_CHAIN, rule)
    _ensure_rule("filter", "FORWARD", ["-j", FORWARD_CHAIN], insert=True)
    if masquerade:
        _ensure_chain("nat", NAT_CHAIN)
        _ensure_rule("nat", NAT_CHAIN, _nat_rule(pod_cidr, router_device))
        _ensure_rule("nat", "POSTROUTING", ["-j", NAT_CHAIN])
    else:
        _remove_own("nat", NAT_CHAIN, ("POSTROUTING",), [_nat_rule(pod_cidr, router_device)])


def _notrack_rule(port: int) -> list[str]:
    return ["-p", "udp", "--dport", str(port), "-j", "CT", "--notrack",
            "-m", "comment", "--comment", "capillary: overlay traffic is not tracked"]


def ensure_notrack(port: int) -> None:
    """Traffic to UDP PORT (the overlay's) untracked by conntrack, both ways. Idempotent."""
    _ensure_chain("raw", NOTRACK_CHAIN)
    _ensure_rule("raw", NOTRACK_CHAIN, _notrack_rule(port))
    for parent in NOTRACK_PARENTS:
        _ensure_rule("raw", parent, ["-j", NOTRACK_CHAIN], insert=True)


def remove_notrack(port: int) -> None:
    """Undo ensure_notrack; the chain and its jumps go once no node has rules left in it."""
    _remove_own("raw", NOTRACK_CHAIN, NOTRACK_PARENTS, [_notrack_rule(port)])


def _chain_is_empty(table: str, chain: str) -> bool:
    proc = subprocess.run(["iptables", "-w", "-t", table, "-S", chain], capture_output=True, text=True)
    return proc.returncode == 0 and all(not line.startswith("-A") for line in proc.stdout.splitlines())


def _remove_own(table: str, chain: str, parents: tuple[str, ...], rules: list[list[str]]) -> None:
    """Remove RULES from CHAIN; the chain and its jumps from PARENTS go once no node has rules
    left in it (several nodes, e.g. test nodes, may share one host)."""
    if not _ipt("-t", table, "-n", "-L", chain, check=False):
        return
    for rule in rules:
        _remove_rule(table, chain, rule)
    if _chain_is_empty(table, chain):
        for parent in parents:
            _remove_rule(table, parent, ["-j", chain])
        _remove_chain(table, chain)


def remove(pod_cidr: str, router_device: str) -> None:
    _remove_own("filter", FORWARD_CHAIN, ("FORWARD",), _forward_rules(pod_cidr))
    _remove_own("nat", NAT_CHAIN, ("POSTROUTING",), [_nat_rule(pod_cidr, router_device)])


def forward_packets(pod_cidr: str) -> int:
    """Packets CAPILLARY-FORWARD has accepted for POD_CIDR: traffic through the host stack."""
    proc = subprocess.run(["iptables", "-w", "-t", "filter", "-n", "-v", "-x", "-L", FORWARD_CHAIN],
                          capture_output=True, text=True)
    total = 0
    for line in proc.stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) > 8 and parts[0].isdigit() and pod_cidr in (parts[7], parts[8]):
            total += int(parts[0])
    return total


def rule_counters(chains: tuple[str, ...] = ("FORWARD", FORWARD_CHAIN), netns: str | None = None) -> dict[str, int]:
    """Packet counters of every rule in CHAINS (filter table), keyed by a readable rule
    ("FORWARD #1 -> CAPILLARY-FORWARD"), for seeing which rules a packet went through;
    in the network namespace at NETNS (a path) when given."""
    out: dict[str, int] = {}
    inside = ["nsenter", f"--net={netns}", "--"] if netns else []
    for chain in chains:
        proc = subprocess.run([*inside, "iptables", "-w", "-t", "filter", "-n", "-v", "-x", "--line-numbers", "-L", chain],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines()[2:]:
            parts = line.split(None, 10)
            if len(parts) < 10 or not parts[0].isdigit():
                continue
            num, pkts, _, target, _, _, iif, oif, src, dst = parts[:10]
            extra = parts[10].strip() if len(parts) > 10 else ""
            match = " ".join(f"{flag} {value}" for flag, value in
                             (("-i", iif), ("-o", oif), ("-s", src), ("-d", dst)) if value not in ("*", "0.0.0.0/0"))
            text = " ".join(x for x in (f"{chain} #{num} -> {target}", match, extra) if x)
            out[text] = int(pkts)
    return out
