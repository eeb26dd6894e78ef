"""Write docs/benchmarks.md (and its PNG plots) from bench/results/*.json.

    .venv/bin/python bench/report.py [--results bench/results] [--out docs/benchmarks.md]
                                     [--readme README.md]

Reads what the benchmarks wrote (a missing file leaves its section saying so) and the
runner's run.json (machine, commands, wall times, what else was running). The targets and
what a miss means are in bench/targets.py. With --readme, the block between the README's
bench markers gets the same targets table, so the two never disagree.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import plots  # noqa: E402
from bench.profile import lines as profile_lines  # noqa: E402
from bench.targets import closing_note, evaluate  # noqa: E402

NAMES = ("datapath", "policy", "cplane", "pods", "footprint", "flows", "cni", "encap", "cidr_scale",
         "cluster_policy")
README_BEGIN, README_END = "<!-- bench:begin (written by bench/report.py) -->", "<!-- bench:end -->"


def spread(s: dict | None, fmt: str = "{:.2f}") -> str:
    if not s:
        return "-"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def image(name: str | None, plot_dir: str, alt: str) -> list[str]:
    return [f"![{alt}]({plot_dir}/{name})", ""] if name else []


# ---- sections ---------------------------------------------------------------------------------

def header(run: dict, results: dict) -> list[str]:
    m = run.get("machine", {})
    steps = [s for s in run.get("steps", []) if not s.get("skipped")]
    env = next((r["environment"] for r in results.values() if r and "environment" in r), {})
    out = ["# capillary benchmarks", "",
           "Every figure is a median over repeats with its spread as [min–max], and where it has a baseline it is "
           "compared as the median of per-repeat ratios against that baseline, measured in the same run on the same "
           "machine (the machine is shared and noisy: absolute numbers move between runs, ratios much less).", "",
           "## How this was run", "",
           f"- command: `{run.get('command', 'make bench')}` (which runs `bench/run.py`; each figure is its own script, "
           f"one after the other), started {run.get('started', '?')}, **{run.get('wall_seconds', '?')} s** in all",
           f"- machine: {m.get('os', '?')}, kernel {m.get('kernel', '?')}, {m.get('cpus', '?')} × {m.get('cpu', '?')}, "
           f"{m.get('memory_gib', '?')} GiB, Python {m.get('python', '?')}",
           f"- capillary commit `{env.get('commit', '?')[:12]}`", "", "| step | command | wall time (s) | result |",
           "|---|---|---|---|"]
    out += [f"| {s['name']} | `{s['command']}` | {s['wall_seconds']} | {'ok' if not s.get('error') else s['error']} |"
            for s in steps]
    out += [f"| {s['name']} | – | – | skipped: its script is not in this tree |"
            for s in run.get("steps", []) if s.get("skipped")]
    snaps = run.get("snapshots", [])
    if snaps:
        out += ["", "What else the machine was doing, between the steps: load averages (1/5/15 min) and the "
                "processes not of this run that used 5% of a CPU or more over one second:", ""]
        for s in snaps:
            out.append(f"- {s['time']} {s['at']}: load {', '.join(f'{x:.2f}' for x in s['loadavg'])}"
                       + ("" if s["busy"] else "; nothing else busy"))
            out += [f"  - `{b}`" for b in s["busy"]]
    return out + [""]


def targets_section(verdicts: list[dict]) -> list[str]:
    rows = [[v["figure"], v["target"], v["measured"], "**met**" if v["ok"] else ("**missed**" if v["ok"] is False
                                                                               else "not measured")]
            for v in verdicts]
    return ["## Targets", "", md_table(["figure", "target", "measured (this run)", "verdict"], rows), ""]


def datapath_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 1. Datapath: pod to pod on one node", ""]
    if not d:
        return lines + ["Not run.", ""]
    p = d["parameters"]
    lines += [f"{p['rounds']} rounds, each variant once per round in rotating order; iperf3 and sockperf runs of "
              f"{p['seconds']} s; client pinned to CPU 0, server to CPU 1. Variants: **redirect** (capillary, "
              "bpf_redirect_peer), **host-stack** (capillary, packets through the host's stack), **kernel** (two netns, "
              "veths to the host, /32 routes, no BPF), **veth** (one veth pair straight between two netns: the limit "
              "for any veth design). Latency is sockperf's half round trip; request/response is round trips per "
              "second with one message in flight.", ""]
    lines += image(plots.datapath(d, out), plot_dir, "datapath")
    metrics = {"gbps_1": ("TCP 1 stream (Gbit/s)", "{:.2f}"), "gbps_4": ("TCP 4 streams (Gbit/s)", "{:.2f}"),
               "rr_per_s": ("request/response (1/s)", "{:.0f}"), "p50_us": ("p50 (us)", "{:.1f}"),
               "p99_us": ("p99 (us)", "{:.1f}")}
    s = d["summary"]
    lines += [md_table(["variant", *(v[0] for v in metrics.values())],
                       [[v, *(spread(s[v]["metrics"][m], f) for m, (_, f) in metrics.items())] for v in s]), ""]
    for base in ("veth", "kernel"):
        lines += [f"Ratio to **{base}** (median [min–max] of per-round ratios):", "",
                  md_table(["variant", *(v[0] for v in metrics.values())],
                           [[v, *(spread(s[v]["ratio_to"][base].get(m), "{:.3f}") for m in metrics)]
                            for v in s if v != base]), ""]
    lines += floor_lines(d)
    counters = d.get("bpf_counters", {})
    if counters:
        lines += ["BPF packet counters during the rounds (the node's programs, all pods): " + "; ".join(
            f"{v}: " + ", ".join(f"{k} {n:,}" for k, n in sorted(c.items())) for v, c in counters.items()), ""]
    return lines


FLOOR_METRICS = {"ns_rr": ("BPF ns/packet, TCP ping-pong", "{:.0f}"), "ns_bulk": ("BPF ns/packet, bulk TCP", "{:.0f}"),
                 "ns_udp": ("BPF ns/packet, UDP 64 B", "{:.0f}"), "udp_pps": ("UDP 64 B x4 (pkt/s)", "{:.0f}"),
                 "p50_us": ("p50 (us)", "{:.1f}"), "gbps_1": ("TCP 1 stream (Gbit/s)", "{:.2f}")}


def floor_lines(d: dict) -> list[str]:
    """The floor program's figures (bench/bpf/floor.c) and each variant's ratio to them."""
    s = d["summary"]
    if "floor" not in s:
        return []
    lines = ["The **floor** variant is the kernel variant's set-up with a minimal program on both host veths "
             "(bench/bpf/floor.c: parse, one hash lookup, MAC rewrite, bpf_redirect_peer). ns/packet is the kernel's "
             "run-time statistics of the program on the sender's host veth (from_container, or the floor) over each "
             f"run; the statistics add {d['stats_overhead_ns']['per_run']:.0f} ns to a run, "
             f"{d['stats_overhead_ns']['in_figure']:.0f} ns of it inside the figures.", "",
             md_table(["variant", *(v[0] for v in FLOOR_METRICS.values())],
                      [[v, *(spread(s[v]["metrics"][m], f) if s[v]["metrics"][m]["median"] else "-"
                             for m, (_, f) in FLOOR_METRICS.items())] for v in s]), "",
             "Ratio to **floor** (median [min–max] of per-round ratios; rounds until its ~95% interval was within "
             "±5%):", "",
             md_table(["variant", *(v[0] for v in FLOOR_METRICS.values())],
                      [[v, *(_settled(s[v], m) for m in FLOOR_METRICS)] for v in s if v != "floor"]), ""]
    insns = d.get("xlated", {})
    if insns:
        lines += ["Instructions after the verifier (helper calls among them): " + "; ".join(
            f"{v} {name} {c['insns']} ({c['helper_calls']})" for v, progs in insns.items()
            for name, c in progs.items()), ""]
    return lines


def _settled(summary: dict, metric: str) -> str:
    ratio = summary["ratio_to"]["floor"].get(metric)
    if not ratio:
        return "-"
    n = summary.get("rounds_to_settle", {}).get("floor", {}).get(metric)
    return f"{spread(ratio, '{:.3f}')} ({n or 'not within'})"


def policy_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 2. Policy scale: entries in the policy map against iptables rules", ""]
    if not d:
        return lines + ["Not run.", ""]
    t, p = d["traffic"], d["parameters"]
    lines += [f"{p['rounds']} rounds, every variant once per round in rotating order; iperf3 {p['seconds']} s and "
              f"sockperf {p['latency_seconds']} s per measurement. **capillary/N**: a node in redirect mode, N allow "
              "entries in the server pod's ingress (client identity × TCP ports, the bench ports among them; map "
              f"size {p['maps']['policy']}). **iptables/N**: two kernel-routed netns, their traffic jumped from "
              "FORWARD to a chain of N non-matching rules and an ACCEPT. Each state is switched in just before "
              "it is measured, then left to settle for 0.5 s.", ""]
    lines += image(plots.policy(d, out), plot_dir, "policy scale")
    s = t["summary"]
    held = t["server_ingress_entries"]
    metrics = {"gbps": ("TCP 1 stream (Gbit/s)", "{:.2f}"), "rr_per_s": ("request/response (1/s)", "{:.0f}"),
               "p50_us": ("p50 (us)", "{:.1f}"), "p99_us": ("p99 (us)", "{:.1f}")}
    rows = [[v, str(held.get(v.split("/")[1], "-")) if v.startswith("capillary") else "–",
             *(spread(s["variants"][v][m], f) for m, (_, f) in metrics.items())] for v in s["variants"]]
    lines += [md_table(["variant", "entries in the server's ingress", *(m[0] for m in metrics.values())], rows), "",
              "Ratios (median [min–max] of per-round ratios):", "",
              md_table(["ratio", *(m[0] for m in metrics.values())],
                       [[k, *(spread(r[m], "{:.3f}") for m in metrics)] for k, r in s["ratios"].items()]), ""]
    switches = {}
    for x in t["policy_switches"]:
        switches.setdefault(x["to"], []).append(x["ms"])
    loads = {}
    for x in t["iptables_loads"]:
        loads.setdefault(x["rules"], []).append(x["ms"])
    lines += ["Switching a state in (median ms): " + "; ".join(
        f"{n:,}: policy over NATS {sorted(switches[n])[len(switches[n]) // 2]:.0f}, iptables-restore "
        f"{sorted(loads.get(n, [0]))[len(loads.get(n, [0])) // 2]:.0f}" for n in t["counts"] if n and n in switches), ""]
    return lines


def cplane_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 3. Control plane: policy published on NATS → first packet with the new verdict", ""]
    if not d:
        return lines + ["Not run.", ""]
    s = d["summary"]["by_size"]
    reps = d["parameters"]["repeats"]
    lines += [f"One node grown to {', '.join(str(c['pods']) for c in d['sizes'])} pods, "
              f"{d['parameters']['rules_per_pod']} base rules per pod (≈10 map entries each). {reps} repetitions per "
              "size: a prober in pod A sends a fresh SYN to pod B every 1 ms while denied; the bench publishes a "
              "policy allowing A → B on that port (a msgpack request on NATS) and takes the time to the first "
              "completed connection; then deletes it and waits for the first unanswered SYN. p99 is nearest-rank: "
              f"with {reps} samples it is the {'largest' if reps < 100 else '99th'} value.", ""]
    lines += image(plots.cplane(d, out), plot_dir, "control plane latency")
    rows = []
    for key, label in (("enforced_ms", "publish → first allowed connection"), ("map_ms", "publish → entry in the map"),
                       ("reply_ms", "publish → NATS reply"), ("handler_ms", "policyd handler time (apply)"),
                       ("denied_ms", "delete publish → first denied SYN")):
        rows.append([label, *(f"{v[key]['p50']:.1f} / {v[key]['p99']:.1f}" for v in s.values())])
    lines += [md_table(["ms, p50 / p99", *(f"{n} pods" for n in s)], rows), ""]
    cols = [f"{c['pods']} pods: {c['rules']} rules, {c['map_entries']:,} map entries, pods applied in "
            f"{c['pods_apply_s']:.1f} s, rules in {c['apply_s']:.1f} s; policyd's plan for one apply "
            f"{c['plan_replay']['apply_plan_ms']:.1f} ms" for c in d["sizes"]]
    ratios = d["summary"]["ratio_of_medians_to_smallest"]
    lines += [f"- {c}" for c in cols]
    lines += ["- median publish → enforced against the smallest size: " + ", ".join(
        f"{n} pods {r.get('enforced_ms', 0):.2f}×" for n, r in ratios.items()), ""]
    return lines


def pods_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 4. Pod churn", ""]
    if not d:
        return lines + ["Not run.", ""]
    per_size = d["parameters"]["repeats"]
    times = ", ".join(f"{n} pods {r}×" for n, r in per_size.items()) if isinstance(per_size, dict) else f"{per_size}×"
    lines += [f"One `capillary apply -f -` of N pods, then one `capillary delete -f -` ({times}), "
              "on a node that already has a probe pod. First packet: from the start of the apply "
              "to the first ping reply from the last pod of the file (pinged every 10 ms once it has an address).",
              ""]
    lines += image(plots.pods(d, out), plot_dir, "pod churn")
    rows = []
    for n, size in d["sizes"].items():
        s = size["summary"]
        rows.append([n, spread(s["apply_s"]), spread(s["create_per_s"], "{:.1f}"), spread(s["first_packet_s"]),
                     spread(s["delete_s"]), spread(s["delete_per_s"], "{:.1f}"),
                     spread(s["create_per_s_ratio_to_smallest"], "{:.2f}")])
    lines += [md_table(["pods", "create (s)", "pods/s created", "last pod's first packet (s)", "delete (s)",
                        "pods/s deleted", "create rate vs smallest size"], rows), ""]
    return lines


def flows_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 5. Flow export", ""]
    if not d:
        return lines + ["Not in this run: `bench/flows.py` (flows/s from the datapath to a NATS subscriber at rising "
                        "offered load, with loss at each step) is not in this tree yet; the runner runs it and this "
                        "section shows bench/results/flows.json once it is.", ""]
    if d.get("description"):
        lines += [d["description"], ""]
    p = d.get("parameters", {})
    if p:
        lines += ["Parameters: " + ", ".join(f"{k} {v}" for k, v in p.items()) + ". Each row: median [min–max] over "
                  "repeats at one offered rate (bench/flows.py's own docstring says what each column counts).", ""]
    lines += image(plots.flows(d, out), plot_dir, "flow export")
    rows = plots.flow_rows(d)
    if rows:
        keys = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict)) or _is_spread(rows[0][k])]
        lines += [md_table(keys, [[_cell(s.get(k)) for k in keys] for s in rows]), ""]
    extra = {k: v for k, v in d.items() if k not in ("benchmark", "environment", "parameters", "steps", "summary",
                                                     "description", "wall_seconds")}
    if extra:
        lines += ["".join(f"- {k.replace('_', ' ')}: {_cell(v) if not isinstance(v, dict) else json.dumps(v)}\n"
                          for k, v in extra.items())]
    return lines


def _is_spread(v) -> bool:
    return isinstance(v, dict) and {"median", "min", "max"} <= set(v)


def _cell(v) -> str:
    if _is_spread(v):
        return spread(v, "{:,.0f}" if abs(v["median"]) >= 100 else "{:.3g}")
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def footprint_section(d: dict | None, plot_dir: str, out: Path) -> list[str]:
    lines = ["## 6. Footprint", ""]
    if not d:
        return lines + ["Not run.", ""]
    p = d["parameters"]
    lines += [f"Each service and nats-server on one node with {' then '.join(str(s['pods']) for s in d['sizes'])} pods: "
              f"idle for {p['idle']:.0f} s, then under load for {p['load']:.0f} s (new TCP connections pod to pod, "
              "32 in flight; a policy applied and deleted over NATS back to back; 2 pods created and deleted with "
              "the CLI back to back). **VmRSS** is the largest sample (every 0.25 s); it counts every page of the "
              "shared libraries a process touched (bcc's LLVM and clang among them). **Pss** shares those pages "
              "among the processes mapping them; **RssAnon** is the process's own heap. CPU is utime + stime over "
              "the window, in % of one CPU.", ""]
    lines += image(plots.footprint(d, out), plot_dir, "footprint")
    rows = []
    for s in d["sizes"]:
        for state in ("idle", "load"):
            for proc, m in s[state].items():
                rows.append([str(s["pods"]), state, proc, f"{m['rss_mb']:.1f}", f"{m['pss_mb']:.1f}",
                             f"{m['anon_mb']:.1f}", f"{m['cpu_pct']:.1f}"])
    lines += [md_table(["pods", "state", "process", "VmRSS (MB)", "Pss (MB)", "RssAnon (MB)", "CPU (%)"], rows), ""]
    lines += [f"- load at {s['pods']} pods: {s['load_counts']['connections']:,} connections "
              f"({s['load_counts']['connect_failures']} failed), {s['load_counts']['policy_changes']} policy changes, "
              f"{s['load_counts']['pod_cycles']} pod create/delete cycles" for s in d["sizes"]]
    ratio = d["summary"]["ratio_to_smallest"]
    last = str(d["sizes"][-1]["pods"])
    lines += [f"- VmRSS under load at {last} pods against {d['sizes'][0]['pods']} pods: " + ", ".join(
        f"{proc} {r:.2f}×" for proc, r in ratio[last].items()), ""]
    for name, prof in (d.get("profiles") or {}).items():
        if prof.get("samples"):
            lines += [f"Where {name}'s CPU goes under this load at {last} pods (py-spy, one more load window, "
                      f"{prof['samples']} samples at 250 Hz), functions by own time:", "", "```",
                      *profile_lines(prof, "self", 8), "```", ""]
    return lines


def cni_section(d: dict | None) -> list[str]:
    lines = ["## 7. Containers through the CNI plugin", ""]
    if not d or "summary" not in d:
        return lines + ["Not run.", ""]
    s, p = d["summary"], d["parameters"]
    lines += [f"{p['containers']} `podman run -d` containers, alternating between a network of `type: capillary` and "
              "one of the reference `bridge` plugin (host-local IPAM, no masquerade): the time from `podman run` to "
              "the container's first answer to a ping from the host. Then the plugin alone: "
              f"{p['adds']} ADDs with the spec's environment into fresh netns, each split into start-up (the "
              "plugin's interpreter importing what ADD imports) and work (the rest: NATS, endpointd, the kernel).", ""]
    rows = [["create → first packet, capillary (s)", spread(s["first_packet_s"]["capillary"])],
            ["create → first packet, bridge (s)", spread(s["first_packet_s"]["bridge"])],
            ["ratio capillary / bridge", spread(s["ratio_to_bridge"])],
            ["ADD total (ms)", spread(s["add_total_ms"], "{:.0f}")],
            ["ADD start-up (ms)", spread(s["add_startup_ms"], "{:.0f}")],
            ["ADD work (ms)", spread(s["add_work_ms"], "{:.0f}")]]
    return lines + [md_table(["figure", "median [min–max]"], rows), ""]


def encap_section(d: dict | None) -> list[str]:
    lines = ["## 8. Across nodes: the encapsulation tax", ""]
    if not d or "summary" not in d:
        return lines + ["Not run.", ""]
    p, s = d["parameters"], d["summary"]
    lines += [f"Two node namespaces on one underlay bridge (MTU {p['underlay_mtu']}), capillary's datapath in each; "
              f"{p['rounds']} rounds, each variant once per round in rotating order; iperf3 and sockperf runs of "
              f"{p['seconds']} s, client on CPU 0, server on CPU 1, and 4 streams once more with both on CPU 1 "
              "(on two CPUs, 4 streams apart end in one of two states by chance); the senders' TCP congestion "
              f"control: {p.get('congestion', 'the machine default')}. **native**: pod to pod, the kernel routing each "
              "pod CIDR via its node's underlay address, the receiving node checking policy with the source identity "
              "from its ipcache. **tunnel**: pod to pod through the collect-metadata VXLAN device, the source "
              f"identity in the VNI (pod MTU {p['tunnel_pod_mtu']}). **underlay**: node to node, host namespace to "
              "host namespace over the same bridge: the limit.", ""]
    metrics = {"gbps_1": ("TCP 1 stream (Gbit/s)", "{:.2f}"), "gbps_4": ("TCP 4 streams (Gbit/s)", "{:.2f}"),
               "gbps_4_one_cpu": ("TCP 4 streams, one CPU (Gbit/s)", "{:.2f}"),
               "rr_per_s": ("request/response (1/s)", "{:.0f}"), "p50_us": ("p50 (us)", "{:.1f}"),
               "p99_us": ("p99 (us)", "{:.1f}")}
    lines += [md_table(["variant", *(v[0] for v in metrics.values())],
                       [[v, *(spread(s[v]["metrics"][m], f) for m, (_, f) in metrics.items())] for v in s]), "",
              "Ratio to **underlay** (median [min–max] of per-round ratios):", "",
              md_table(["variant", *(v[0] for v in metrics.values())],
                       [[v, *(spread(s[v]["ratio_to_underlay"][m], "{:.3f}") for m in metrics)]
                        for v in s if v != "underlay"]), ""]
    if d.get("vxlan"):
        lines += ["During the rounds: " + ", ".join(f"{k} {n:,}" for k, n in d["vxlan"].items()) + ".", ""]
    return lines


def cidr_scale_section(d: dict | None) -> list[str]:
    lines = ["## 9. CIDR-heavy policy at scale", ""]
    if not d or not d.get("results"):
        return lines + ["Not run.", ""]
    lines += ["One NetworkPolicy allowing one pod selector plus N ipBlock /32 peers, on a node with two pods, "
              "published on NATS; the apply's reply comes once the policy map and the ipcache hold every entry. "
              "Meanwhile policyd's health and a 10-peer policy to the other pod are asked again and again; then "
              "the policy is deleted and what it alone held is counted (`bench/cidr_scale.py`).", ""]
    rows = [[str(r["peers"]), f"{r['apply_s']:.2f}", f"{r['delete_s']:.2f}", str(r["ipcache_entries"]),
             str(r["server_entries"]), _p99(r["health_ms"]), _p99(r["small_apply_ms"]),
             ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb"].items()), str(r["left_after_delete"])]
            for r in d["results"]]
    return lines + [md_table(["peers", "apply (s)", "delete (s)", "ipcache entries", "server entries",
                              "health p99 (ms)", "small apply p99 (ms)", "peak RSS (MB)", "left after delete"],
                             rows), ""]


def cluster_policy_section(d: dict | None) -> list[str]:
    lines = ["## 10. Across nodes: a policy published on one node, in force on another", ""]
    if not d or "summary" not in d:
        return lines + ["Not run.", ""]
    s = d["summary"]
    lines += ["`capillary cluster up --nodes 3` (native routing), a client pod on node A and a target pod on node C; "
              "each round publishes one revision of a CiliumNetworkPolicy on node A's `policy.apply` only (one "
              "request to A's policyd), the revision allowing the client a port no earlier one named, and is timed "
              "until node C's own policy map holds the entry for that port (`bench/cluster_policy.py`).", ""]
    verdict = "met" if s["met"] else f"missed by {s['p99_ms'] - s['target_ms']:.1f} ms"
    return lines + [md_table(["revisions", "p50", "p99", "max", "target"],
                             [[str(s["rounds"]), f"{s['p50_ms']:.1f} ms", f"{s['p99_ms']:.1f} ms",
                               f"{s['ms']['max']:.1f} ms", f"p99 ≤ {s['target_ms']:.0f} ms: {verdict}"]]), ""]


def _p99(values: list[float]) -> str:
    if not values:
        return "none answered"
    ordered = sorted(values)
    return f"{ordered[max(0, -(-99 * len(ordered) // 100) - 1)]:.0f} (n={len(ordered)})"


def update_readme(path: Path, doc: Path, run: dict, verdicts: list[dict]) -> None:
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_BEGIN} ... {README_END} block")
    m = run.get("machine", {})
    link = doc.resolve().relative_to(path.resolve().parent)
    block = [README_BEGIN,
             f"The last full run ({run.get('started', '?')[:16].replace('T', ' ')}, {run.get('wall_seconds', '?')} s, "
             f"{m.get('cpus', '?')} CPUs, kernel {m.get('kernel', '?')}) against the targets; every figure, plot "
             f"and profile is in [{link}]({link}).", "",
             *targets_section(verdicts)[2:-1], README_END]
    head, rest = text.split(README_BEGIN, 1)
    path.write_text(head + "\n".join(block) + rest.split(README_END, 1)[1])


# ---- main -------------------------------------------------------------------------------------

def load(results_dir: Path) -> tuple[dict, dict]:
    results = {}
    for name in NAMES:
        path = results_dir / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else None
    run_path = results_dir / "run.json"
    return results, (json.loads(run_path.read_text()) if run_path.exists() else {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, help="also update the targets table in this README")
    args = parser.parse_args(argv)
    results, run = load(args.results)
    plot_dir = args.out.with_suffix("")              # docs/benchmarks.md -> docs/benchmarks/
    plot_dir.mkdir(parents=True, exist_ok=True)
    rel = plot_dir.name
    verdicts = evaluate(results)
    lines = [*header(run, results), *targets_section(verdicts),
             *datapath_section(results["datapath"], rel, plot_dir), *policy_section(results["policy"], rel, plot_dir),
             *cplane_section(results["cplane"], rel, plot_dir), *pods_section(results["pods"], rel, plot_dir),
             *flows_section(results["flows"], rel, plot_dir), *footprint_section(results["footprint"], rel, plot_dir),
             *cni_section(results["cni"]), *encap_section(results["encap"]),
             *cidr_scale_section(results["cidr_scale"]), *cluster_policy_section(results["cluster_policy"]),
             *closing_note(verdicts, results)]
    args.out.write_text("\n".join(lines).rstrip() + "\n")
    if args.readme:
        update_readme(args.readme, args.out, run, verdicts)
    print(f"wrote {args.out} and {len(list(plot_dir.glob('*.png')))} plots in {plot_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
