"""The encapsulation tax: pod to pod across two nodes, natively routed and through VXLAN,
against the underlay itself.

Two node namespaces on one underlay bridge (tests/support/twonodes.py: capillary's maps and
programs compiled for each, on a bpffs mount of its own), each with the VXLAN device and a
route to the other's pod CIDR via its underlay address. Three variants, in alternating
rounds (the order rotates each round):
  native    a pod on node a to a pod on node b, learnt without a tunnel endpoint, with
            BPF host routing: from_container sends it out of node a's underlay device
            (bpf_fib_lookup), node b's from_netdev checks its policy with the source
            identity from its ipcache and delivers it (pod MTU 1500); with --legacy-routing
            (datapath.hostLegacyRouting) both host stacks forward it and node b's
            to_container checks the policy
  tunnel    another pair of pods, learnt with the other node's underlay address:
            from_container writes the VXLAN headers (VNI = the source identity) and sends
            the packet out of the underlay device, node b's from_netdev takes them off,
            checks policy and delivers (pod MTU 1450: the underlay's less 50 bytes of
            VXLAN); the VXLAN devices carry only what BPF leaves to them (their packet
            counts are reported)
  underlay  node a's host namespace to node b's over the same bridge: the limit
With --kernel-vxlan, two more, node a's host namespace to node b's through VXLAN devices of
the kernel's own with no capillary program on the way (overlay MTU 1450, as the pods'):
  kvxlan    a fixed VXLAN device (one VNI, the other node as its remote): the kernel's
            VXLAN with a cached route and no per-packet metadata
  kvxlan-md a collect-metadata VXLAN device, as capillary's, the tunnel key set by an
            encap route (`ip route ... encap ip id ... dst ...`) instead of from_container:
            what the kernel's collect-metadata VXLAN costs by itself
Metrics as bench/datapath.py: iperf3 TCP with 1 and with 4 streams, sockperf TCP ping-pong
(p50, p99), client and server on CPUs of their own (--cpus); and 4 streams once more with
the client on the server's CPU ("4 streams, one CPU"). On two CPUs a 4-stream run with the
two apart ends in one of two states by chance (the client's CPU saturated, or the
server's), the underlay's too, so its ratios compare runs in different states; on one CPU
every run is in the same state, and the figure is what each path costs per byte. Each
variant is compared with `underlay` through the median over rounds of the per-round ratio.
Targets: native >= 0.95x and tunnel >= 0.85x in throughput (1 stream; 4 streams on one
CPU), p50 native <= 1.10x and tunnel <= 1.20x.

    .venv/bin/python bench/encap.py [--rounds 5] [--seconds 2] [--quick] [--cpus split|same|none]
                                    [--cc cubic|bbr|default] [--legacy-routing] [--big-tcp]
                                    [--kernel-vxlan] [--perf]

iperf3's senders use cubic unless --cc says otherwise (bench/traffic.py, DEFAULT_CC: with
BBR's pacing, one stream measures BBR's rate estimate on these paths, not what they cost).

With --big-tcp, datapath.bigTCP: the native pods' veths and every underlay device build and
take 192 KiB TCP packets (IPv4 BIG TCP, as a NIC with that TSO size); the underlay variant
gets them too, the tunnel's pods keep 64 KiB (a tunnel-mode node refuses BIG TCP).
With --perf, then `perf record -a` during one iperf3 run (1 stream) through the tunnel and
one through the underlay: the top kernel symbols of each, to compare where the time goes.
Prints tables and writes bench/results/encap.json. Everything it makes (namespaces capu-x*,
capn-x*, cap-ox*, bpffs mounts /sys/fs/bpf/capillary-ox*, servers) is removed at the end,
also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (BENCH_TAG, Spread, cleaned_up, environment, log, ping, ratios, run, start,  # noqa: E402
                          table, write_results)
from bench.traffic import SOCKPERF_PORT  # noqa: E402
from bench.targets import ENCAP_TARGETS  # noqa: E402
from bench.datapath import (METRICS as DATAPATH_METRICS, PLACEMENTS, Pair, Placement, Sample,  # noqa: E402
                            measure, profile_variants, run_rounds, series, start_servers)
from bench.traffic import add_cc_argument, check_cc, congestion, iperf  # noqa: E402
from services.datapath.mtu import GSO_DEFAULT_SIZE  # noqa: E402
from services.routed import tunnel  # noqa: E402
from tests.support.twonodes import UNDERLAY_MTU, TwoNodes, ip  # noqa: E402

VARIANTS = ("native", "tunnel", "underlay")
KERNEL_VARIANTS = ("kvxlan", "kvxlan-md")
KERNEL_VNI = "42"
KERNEL_PORTS = {"kvxlan": "4789", "kvxlan-md": "4790"}      # apart from capillary's 8472
KERNEL_NETS = {"kvxlan": "10.79.0", "kvxlan-md": "10.79.1"}  # node a .1, node b .2
# What is compared with the underlay: throughput and latency. The datapath bench's BPF
# ns/packet figures are 0 for the underlay (no program), and its UDP rate is not run here.
METRICS = {**{m: DATAPATH_METRICS[m] for m in ("gbps_1", "gbps_4")},
           "gbps_4_one_cpu": "TCP 4 streams, one CPU (Gbit/s)",
           **{m: DATAPATH_METRICS[m] for m in ("rr_per_s", "p50_us", "p99_us")}}
BASELINE = "underlay"
PROFILED = ("tunnel", BASELINE)
# ratio to the underlay: >= for throughput, <= for latency
TARGETS = {v: {"gbps_1": gbps, "gbps_4_one_cpu": gbps, "p50_us": p50} for v, (gbps, p50) in ENCAP_TARGETS.items()}


@dataclass(frozen=True)
class EncapSample(Sample):
    gbps_4_one_cpu: float = 0.0     # 4 streams, the client on the server's CPU


def measure_encap(pair: Pair, cpus: Placement, seconds: int) -> EncapSample:
    """bench/datapath.py's Sample of PAIR, then 4 streams with client and server on one CPU
    (with --cpus none, unpinned like the rest)."""
    sample = measure(pair, cpus, seconds)
    gbps, _ = iperf(pair, Placement(cpus.server_cpu, cpus.server_cpu), seconds, 4)
    return EncapSample(**asdict(sample), gbps_4_one_cpu=gbps)


def set_up(cleanup, workdir: Path, cpus: Placement, legacy: bool, big_tcp: bool = False) -> list[Pair]:
    two = TwoNodes(workdir, tunnel_mode=True, routes=True, tag_prefix=BENCH_TAG, legacy=legacy, big_tcp=big_tcp)
    cleanup.push("two nodes", two.close)
    log(f"building nodes {two.tag}a and {two.tag}b (4 bcc compiles)")
    two.__enter__()
    native = (two.a.add_pod("na", "10.77.1.10", 1001, 11, mtu=UNDERLAY_MTU),
              two.b.add_pod("nb", "10.77.2.10", 1002, 12, mtu=UNDERLAY_MTU))
    # a tunnel-mode node has no BIG TCP (datapath.bigTCP is refused with it)
    tunnelled = (two.a.add_pod("ta", "10.77.1.20", 1003, 13, gso_max=GSO_DEFAULT_SIZE),
                 two.b.add_pod("tb", "10.77.2.20", 1004, 14, gso_max=GSO_DEFAULT_SIZE))
    for client, server in (native, tunnelled):
        node_ip = two.b.underlay_ip if client is tunnelled[0] else ""
        two.a.learn_remote(server, node_ip)
        two.b.learn_remote(client, two.a.underlay_ip if node_ip else "")
    for node in two.nodes:
        node.apply_policies([], {})        # no policy selects the pods: allowed both ways
    pairs = [Pair("native", f"/run/netns/{native[0].netns_name}", f"/run/netns/{native[1].netns_name}", native[1].ip),
             Pair("tunnel", f"/run/netns/{tunnelled[0].netns_name}", f"/run/netns/{tunnelled[1].netns_name}",
                  tunnelled[1].ip),
             Pair("underlay", str(two.a.netns), str(two.b.netns), two.b.underlay_ip)]
    for pair in pairs:
        start_servers(cleanup, pair, cpus)
    return pairs, two


def kernel_vxlan(two: TwoNodes) -> list[Pair]:
    """The --kernel-vxlan variants' devices in both node namespaces (removed with them) and
    their pairs, served by the underlay variant's servers in node b's namespace."""
    overlay_mtu = str(tunnel.pod_mtu(UNDERLAY_MTU))
    for here, there, me in ((two.a, two.b, 1), (two.b, two.a, 2)):
        n, net_fixed, net_md = here.netns.name, KERNEL_NETS["kvxlan"], KERNEL_NETS["kvxlan-md"]
        ip("-n", n, "link", "add", "kvx", "type", "vxlan", "id", KERNEL_VNI, "remote", there.underlay_ip,
           "dstport", KERNEL_PORTS["kvxlan"], "dev", "eth0")
        ip("-n", n, "addr", "add", f"{net_fixed}.{me}/24", "dev", "kvx")
        ip("-n", n, "link", "add", "kvxmd", "mtu", overlay_mtu, "type", "vxlan", "external",
           "dstport", KERNEL_PORTS["kvxlan-md"])
        ip("-n", n, "addr", "add", f"{net_md}.{me}/32", "dev", "kvxmd")
        for dev in ("kvx", "kvxmd"):
            ip("-n", n, "link", "set", dev, "up")
        ip("-n", n, "route", "add", f"{net_md}.{3 - me}/32", "encap", "ip", "id", KERNEL_VNI, "dst",
           there.underlay_ip, "dev", "kvxmd", "src", f"{net_md}.{me}")
    return [Pair(v, str(two.a.netns), str(two.b.netns), f"{KERNEL_NETS[v]}.2") for v in KERNEL_VARIANTS]


def start_sockperf(cleanup, pair: Pair, cpus: Placement, timeout: float = 10) -> Pair:
    """PAIR's own sockperf server (on its address; iperf3's, on every address, is the
    underlay's), once it listens and PAIR's server answers a ping."""
    start(cleanup, cpus.server(["sockperf", "sr", "--tcp", "-i", pair.server_ip, "-p", str(SOCKPERF_PORT)]),
          pair.server)
    deadline = time.monotonic() + timeout
    while not run(["ss", "-Hltn", f"src {pair.server_ip}:{SOCKPERF_PORT}"], pair.server).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pair.variant}: nothing listens on {pair.server_ip}:{SOCKPERF_PORT}")
        time.sleep(0.05)
    if not ping(pair.client, pair.server_ip):
        raise RuntimeError(f"{pair.variant}: no ping reply from {pair.server_ip}")
    return pair


def vxlan_packets(two: TwoNodes) -> dict[str, int]:
    """Packets node a's VXLAN device sent and node b's received: what BPF left to the kernel's
    VXLAN (a packet before its next hop's neighbour is resolved, little else)."""
    def count(node, way: str) -> int:
        return int(node.run("cat", f"/sys/class/net/{tunnel.DEVICE}/statistics/{way}_packets", check=True).stdout)
    return {"node a vxlan tx_packets": count(two.a, "tx"), "node b vxlan rx_packets": count(two.b, "rx")}


def summarize(rounds: list[dict], variants: tuple[str, ...]) -> dict:
    summary = {}
    for variant in variants:
        metrics = {m: Spread.of(series(rounds, variant, m)) for m in EncapSample.__dataclass_fields__}
        versus = {m: Spread.of(ratios(series(rounds, variant, m), series(rounds, BASELINE, m))) for m in METRICS}
        summary[variant] = {"metrics": metrics, "ratio_to_underlay": versus}
    return summary


def verdict(ratio: float, metric: str, target: float) -> str:
    ok = ratio >= target if metric.startswith("gbps") else ratio <= target
    return f"{ratio:.3f} {'ok' if ok else 'MISS'}"


def report(summary: dict) -> str:
    absolute = table(["variant", *METRICS.values()],
                     [[v, *(summary[v]["metrics"][m].text() for m in METRICS)] for v in summary])
    relative = table(["variant", *METRICS.values()],
                     [[v, *(summary[v]["ratio_to_underlay"][m].text("{:.3f}") for m in METRICS)]
                      for v in summary if v != BASELINE])
    targets = table(["variant", "1 stream", "4 streams, one CPU", "p50"],
                    [[f"{v} (>= {t['gbps_1']}x, <= {t['p50_us']}x)",
                      *(verdict(summary[v]["ratio_to_underlay"][m].median, m, t[m]) for m in t)]
                     for v, t in TARGETS.items()])
    return "\n".join(["median [min-max] over rounds", absolute, "",
                      "ratio to underlay: median [min-max] of per-round ratios", relative, "",
                      "targets (median ratio to underlay)", targets])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds, every variant once per round (default 5; quick 1)")
    parser.add_argument("--seconds", type=int, help="length of each iperf3/sockperf run (default 2; quick 1)")
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--legacy-routing", action="store_true",
                        help="native variant through the host stacks (datapath.hostLegacyRouting)")
    parser.add_argument("--kernel-vxlan", action="store_true",
                        help="also node to node through the kernel's own VXLAN devices, fixed and collect-metadata, "
                             "with no capillary program: what the kernel's VXLAN costs by itself")
    parser.add_argument("--perf", action="store_true",
                        help="then `perf record -a` during iperf3 (1 stream) through the tunnel and the underlay: "
                             "the top kernel symbols")
    parser.add_argument("--big-tcp", action="store_true",
                        help="datapath.bigTCP: the native pods' veths and the underlay carry 192 KiB TCP packets "
                             "(the tunnel's pods keep 64 KiB)")
    parser.add_argument("--cpus", choices=PLACEMENTS, default="split",
                        help="client/server CPUs: split 0/1 (default), same 1/1, none (unpinned)")
    add_cc_argument(parser)
    args = parser.parse_args(argv)
    check_cc(parser, args)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (1 if args.quick else 2)
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = Placement(*PLACEMENTS[args.cpus])
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capillary-bench-encap-") as tmp, cleaned_up() as cleanup:
        pairs, two = set_up(cleanup, Path(tmp), cpus, args.legacy_routing, args.big_tcp)
        if args.kernel_vxlan:
            pairs += [start_sockperf(cleanup, pair, cpus) for pair in kernel_vxlan(two)]
        cc, cc_text = congestion(args.cc)
        pairs = [replace(pair, congestion=cc) for pair in pairs]
        before = vxlan_packets(two)
        rounds = run_rounds(pairs, cpus, args.rounds, args.seconds, measure_encap)
        after = vxlan_packets(two)
        perf = profile_variants(pairs, cpus, args.seconds, PROFILED) if args.perf else None
    sent = {k: after[k] - before[k] for k in after}
    variants = VARIANTS + (KERNEL_VARIANTS if args.kernel_vxlan else ())
    summary = summarize(rounds, variants)
    print(f"{args.rounds} rounds of {args.seconds} s runs, CPUs {args.cpus} (client {cpus.client_cpu}, "
          f"server {cpus.server_cpu}), TCP congestion control {cc_text}{', BIG TCP' if args.big_tcp else ''}\n")
    print(report(summary))
    print(f"\nduring the rounds: {sent}")
    for variant, found in (perf or {}).items():
        print(f"\nperf, iperf3 through {variant}: {found['error'] or ''}")
        print("\n".join(f"  {row}" for row in found["top"]))
    path = write_results("encap", {
        "benchmark": "encap", "environment": environment(),
        "parameters": {"rounds": args.rounds, "seconds": args.seconds, "variants": list(variants), "cpus": args.cpus,
                       "legacy_routing": args.legacy_routing, "big_tcp": args.big_tcp, "congestion": cc_text,
                       "underlay_mtu": UNDERLAY_MTU, "tunnel_pod_mtu": tunnel.pod_mtu(UNDERLAY_MTU),
                       "targets_vs_underlay": TARGETS},
        "rounds": [{"order": r["order"], "samples": {v: asdict(s) for v, s in r["samples"].items()}} for r in rounds],
        "summary": summary, "vxlan": sent, "perf": perf, "wall_seconds": round(time.monotonic() - began, 1)})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
