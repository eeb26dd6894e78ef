"""Traffic through a pod pair, for the bench scripts: where it goes (Pair), which CPUs the
client and server run on (Placement), the servers, and one measurement each of iperf3 TCP,
sockperf TCP ping-pong and iperf3 UDP small packets."""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Cleanup, Node, ping, run, start, wait_listening

IPERF_PORT, SOCKPERF_PORT = 5201, 11111
# The sender's congestion control decides what one stream measures. With BBR, TCP paces itself
# at its estimate of the path's rate, and on paths inside one machine the estimate, not the
# CPU, sets the rate: between two node namespaces one stream ran at about half of what cubic
# reached, the client's CPU partly idle, and every path came out near the same ceiling. Cubic
# (the kernel's default) sends as fast as the CPUs carry it, so a ratio is what a path costs.
DEFAULT_CC = "cubic"
SYSCTL_CC = Path("/proc/sys/net/ipv4")
UDP_PAYLOAD, UDP_FLOWS = 64, 4
BUSY_TRIES, BUSY_WAIT = 20, 0.25   # an iperf3 server still closing the last (UDP) test says it is busy


@dataclass(frozen=True)
class Pair:
    """Where one variant's traffic goes: from the client netns to server_ip in the server netns."""

    variant: str
    client: str
    server: str
    server_ip: str
    node: Node | None = None
    programs: dict[str, int] | None = None    # name -> fd, timed by run-time statistics; the first is
                                              # the one on the sender's host veth
    congestion: str | None = DEFAULT_CC       # iperf3's TCP congestion control (-C); None: the netns's


@dataclass(frozen=True)
class Placement:
    client_cpu: str | None
    server_cpu: str | None

    def client(self, argv: list[str]) -> list[str]:
        return pinned(self.client_cpu, argv)

    def server(self, argv: list[str]) -> list[str]:
        return pinned(self.server_cpu, argv)


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu else argv


def available_cc() -> list[str]:
    return (SYSCTL_CC / "tcp_available_congestion_control").read_text().split()


def congestion(choice: str) -> tuple[str | None, str]:
    """iperf3's -C for CHOICE (None: the netns's own), and what it is, for the report."""
    if choice == "default":
        machine = (SYSCTL_CC / "tcp_congestion_control").read_text().strip()
        return None, f"{machine} (the machine's default)"
    return choice, choice


def add_cc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cc", default=DEFAULT_CC, metavar="NAME",
                        help=f"iperf3's TCP congestion control (default {DEFAULT_CC}); 'default': the machine's "
                             "(net.ipv4.tcp_congestion_control)")


def check_cc(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.cc != "default" and args.cc not in available_cc():
        parser.error(f"--cc {args.cc}: not one of this kernel's ({' '.join(available_cc())})")


def start_servers(cleanup: Cleanup, pair: Pair, cpus: Placement) -> None:
    iperf = start(cleanup, cpus.server(["iperf3", "-s", "-p", str(IPERF_PORT)]), pair.server)
    sockperf = start(cleanup, cpus.server(["sockperf", "sr", "--tcp", "-i", pair.server_ip, "-p", str(SOCKPERF_PORT)]),
                     pair.server)
    wait_listening(pair.server, IPERF_PORT, iperf)
    wait_listening(pair.server, SOCKPERF_PORT, sockperf)
    if not ping(pair.client, pair.server_ip):
        raise RuntimeError(f"{pair.variant}: no ping reply from {pair.server_ip}")


def iperf(pair: Pair, cpus: Placement, seconds: int, streams: int) -> tuple[float, int]:
    """(Gbit/s received, retransmits) of one iperf3 TCP run."""
    argv = ["iperf3", "-c", pair.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-P", str(streams), "-J",
            *(["-C", pair.congestion] if pair.congestion else [])]
    result = iperf_json(pair, cpus, argv, seconds)
    end = result.get("end", {})
    if "error" in result or "sum_received" not in end:      # e.g. interrupted
        raise RuntimeError(f"{pair.variant}: iperf3 gave no result: {result.get('error', 'no summary')}")
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", 0)


def iperf_json(pair: Pair, cpus: Placement, argv: list[str], seconds: int) -> dict:
    """iperf3's JSON result, asking again while the server is still busy with the last test."""
    for _ in range(BUSY_TRIES):
        result = json.loads(run(cpus.client(argv), pair.client, timeout=seconds + 30).stdout)
        if "server is busy" not in result.get("error", ""):
            return result
        time.sleep(BUSY_WAIT)
    return result


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sockperf(pair: Pair, cpus: Placement, seconds: int) -> dict[str, float]:
    """Round trips per second, p50/p99/avg latency in usec and dropped messages of one sockperf
    TCP ping-pong run (the rate over sockperf's valid duration, warm-up excluded)."""
    argv = ["sockperf", "pp", "--tcp", "-i", pair.server_ip, "-p", str(SOCKPERF_PORT), "-t", str(seconds)]
    out = ANSI.sub("", run(cpus.client(argv), pair.client, timeout=seconds + 30).stdout)

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if not match:
            raise RuntimeError(f"sockperf output has no {pattern!r}:\n{out}")
        return float(match.group(1))

    valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)", out)
    if not valid:
        raise RuntimeError(f"sockperf output has no valid-duration line:\n{out}")
    return {"rr_per_s": int(valid.group(2)) / float(valid.group(1)),
            "p50_us": number(r"percentile 50\.000 =\s*([\d.]+)"), "p99_us": number(r"percentile 99\.000 =\s*([\d.]+)"),
            "avg_us": number(r"avg-latency=([\d.]+)"), "dropped": number(r"# dropped messages = (\d+)")}


def udp(pair: Pair, cpus: Placement, seconds: int) -> tuple[float, float]:
    """(packets/s received, packets/s sent) of one iperf3 UDP run: UDP_FLOWS flows of
    UDP_PAYLOAD-byte datagrams, as fast as the client can send."""
    argv = ["iperf3", "-c", pair.server_ip, "-p", str(IPERF_PORT), "-u", "-l", str(UDP_PAYLOAD), "-b", "0",
            "-P", str(UDP_FLOWS), "-t", str(seconds), "-J"]
    result = iperf_json(pair, cpus, argv, seconds)
    end = result.get("end", {})
    if "error" in result or "sum_received" not in end:
        raise RuntimeError(f"{pair.variant}: iperf3 UDP gave no result: {result.get('error', 'no summary')}")
    got, sent = end["sum_received"], end["sum_sent"]
    return got["bytes"] / UDP_PAYLOAD / got["seconds"], sent["bytes"] / UDP_PAYLOAD / sent["seconds"]
