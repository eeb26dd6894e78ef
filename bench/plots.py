"""The report's PNG plots, one per figure, from the results JSON (bench/report.py calls these).

Every bar or point is a median; its error bar spans the min and max over the repeats.
Each function returns the file name it wrote (in OUT), or None when the data is missing.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")                       # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110
COLORS = {"redirect": "#1f77b4", "host-stack": "#9467bd", "kernel": "#7f7f7f", "veth": "#2ca02c",
          "capillary": "#1f77b4", "iptables": "#d62728", "idle": "#aec7e8", "load": "#1f77b4"}


def _err(spreads: list[dict]) -> list[list[float]]:
    return [[s["median"] - s["min"] for s in spreads], [s["max"] - s["median"] for s in spreads]]


def _bars(ax, labels: list[str], spreads: list[dict], title: str, colors: list[str] | None = None) -> None:
    ax.bar(labels, [s["median"] for s in spreads], yerr=_err(spreads), capsize=4,
           color=colors or [COLORS.get(label, "#1f77b4") for label in labels])
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def datapath(data: dict, out: Path) -> str | None:
    summary = data.get("summary")
    if not summary:
        return None
    variants = list(summary)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (metric, title) in zip(axes, (("gbps_1", "TCP, 1 stream (Gbit/s)"), ("gbps_4", "TCP, 4 streams (Gbit/s)"),
                                          ("rr_per_s", "request/response (round trips/s)"),
                                          ("p50_us", "latency p50 (us, half round trip)"))):
        _bars(ax, variants, [summary[v]["metrics"][metric] for v in variants], title)
    fig.suptitle("Pod to pod on one node (median, min-max over rounds)", fontsize=11)
    return _save(fig, out, "datapath.png")


def policy(data: dict, out: Path) -> str | None:
    traffic = data.get("traffic", {})
    if "summary" not in traffic:
        return None
    counts, variants = traffic["counts"], traffic["summary"]["variants"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, (metric, title) in zip(axes, (("gbps", "TCP, 1 stream (Gbit/s)"), ("rr_per_s", "request/response (1/s)"),
                                          ("p50_us", "latency p50 (us)"))):
        for kind in ("capillary", "iptables"):
            spreads = [variants[f"{kind}/{n}"][metric] for n in counts]
            ax.errorbar([f"{n:,}" for n in counts], [s["median"] for s in spreads], yerr=_err(spreads),
                        marker="o", capsize=4, label=f"{kind} ({'policy entries' if kind == 'capillary' else 'rules'})",
                        color=COLORS[kind])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("policy entries / iptables rules")
        ax.grid(alpha=0.3)
    if axes[2].get_ylim()[1] > 10 * axes[2].get_ylim()[0] > 0:
        axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Policy scale (median, min-max over rounds)", fontsize=11)
    return _save(fig, out, "policy.png")


def cplane(data: dict, out: Path) -> str | None:
    summary = data.get("summary", {}).get("by_size")
    if not summary:
        return None
    sizes = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key, label, color in (("enforced_ms", "publish -> first allowed packet", "#1f77b4"),
                              ("reply_ms", "publish -> NATS reply", "#ff7f0e")):
        ax.plot(sizes, [summary[s][key]["p50"] for s in sizes], marker="o", color=color, label=f"{label}, p50")
        ax.plot(sizes, [summary[s][key]["p99"] for s in sizes], marker="^", linestyle="--", color=color,
                label=f"{label}, p99")
    ax.axhline(data["summary"]["target_p99_ms"], color="#d62728", linewidth=1, label="target p99 at 100 pods")
    ax.set_xlabel("pods on the node (10 base rules per pod)")
    ax.set_ylabel("ms (log scale)")
    ax.set_yscale("log")
    ax.set_title("Policy publish -> enforced", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "cplane.png")


def pods(data: dict, out: Path) -> str | None:
    sizes = data.get("sizes")
    if not sizes:
        return None
    labels = list(sizes)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.38
    xs = range(len(labels))
    for i, (key, name, color) in enumerate((("create_per_s", "create", "#1f77b4"), ("delete_per_s", "delete", "#ff7f0e"))):
        spreads = [sizes[s]["summary"][key] for s in labels]
        axes[0].bar([x + (i - 0.5) * width for x in xs], [s["median"] for s in spreads], width, yerr=_err(spreads),
                    capsize=4, color=color, label=name)
    axes[0].set_xticks(list(xs), [f"{s} pods" for s in labels])
    axes[0].set_title("pods per second (one apply / one delete)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(axis="y", alpha=0.3)
    _bars(axes[1], [f"{s} pods" for s in labels], [sizes[s]["summary"]["first_packet_s"] for s in labels],
          "apply start -> last pod's first ping reply (s)", ["#2ca02c"] * len(labels))
    fig.suptitle("Pod churn (median, min-max over repeats)", fontsize=11)
    return _save(fig, out, "pods.png")


def footprint(data: dict, out: Path) -> str | None:
    sizes = data.get("sizes")
    if not sizes:
        return None
    procs = list(sizes[0]["idle"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    groups = [(s["pods"], state) for s in sizes for state in ("idle", "load")]
    width = 0.8 / len(groups)
    for i, (n, state) in enumerate(groups):
        size = next(s for s in sizes if s["pods"] == n)
        xs = [p + (i - len(groups) / 2 + 0.5) * width for p in range(len(procs))]
        alpha = 0.55 if n == sizes[0]["pods"] else 1.0
        for ax, key in zip(axes, ("rss_mb", "cpu_pct")):
            ax.bar(xs, [size[state][p][key] for p in procs], width, color=COLORS[state], alpha=alpha,
                   edgecolor="black", linewidth=0.4, label=f"{n} pods, {state}")
    axes[0].axhline(data.get("summary", {}).get("target", {}).get("mb", 100), color="#d62728", linewidth=1,
                    label="target")
    for ax, title in zip(axes, ("VmRSS, largest sample (MB)", "CPU (% of one CPU)")):
        ax.set_xticks(range(len(procs)), procs)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Footprint per process", fontsize=11)
    return _save(fig, out, "footprint.png")


def flow_rows(data: dict) -> list[dict]:
    """bench/flows.py's rows, one per offered rate: its summary (medians over repeats) when
    it has one, else its steps."""
    rows = data.get("summary") if isinstance(data.get("summary"), list) else data.get("steps", [])
    return [r for r in rows if isinstance(r, dict)]


def flows(data: dict, out: Path) -> str | None:
    """Exported flows/s and loss against offered load, when the rows carry those numbers."""
    rows = flow_rows(data)
    keys = _flow_keys(rows)
    if not keys:
        return None
    offered, delivered, loss = keys
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [_median(s[offered]) for s in rows]
    ys = [s[delivered] for s in rows]
    if all(isinstance(y, dict) for y in ys):
        ax.errorbar(xs, [y["median"] for y in ys], yerr=_err(ys), marker="o", capsize=4, label=f"{delivered} flows/s")
    else:
        ax.plot(xs, [_median(y) for y in ys], marker="o", label=f"{delivered} flows/s")
    ax.plot(xs, xs, linestyle=":", color="#7f7f7f", label="offered")
    ax.set_xlabel(f"{offered} flows/s")
    ax.set_ylabel("flows/s")
    if loss:
        ax2 = ax.twinx()
        ax2.plot(xs, [_median(s[loss]) for s in rows], marker="x", color="#d62728", label=loss)
        ax2.set_ylabel(loss)
        ax2.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Flow export to a NATS subscriber", fontsize=11)
    return _save(fig, out, "flows.png")


def _median(value) -> float:
    return value["median"] if isinstance(value, dict) else float(value)


def _flow_keys(rows: list[dict]) -> tuple[str, str, str | None] | None:
    if not rows:
        return None
    keys = list(rows[0])
    offered = next((k for k in keys if k.startswith("offered")), None)
    delivered = next((k for k in keys if k.startswith(("exported", "delivered", "received"))), None)
    loss = next((k for k in keys if ("loss" in k or "lost" in k) and "ratio" in k),
                next((k for k in keys if "loss" in k or "lost" in k), None))
    return (offered, delivered, loss) if offered and delivered else None
