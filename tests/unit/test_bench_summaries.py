"""The benchmark suite's own arithmetic: percentiles, py-spy stack sums, target verdicts."""
from bench.common import Spread, percentile
from bench.profile import summarize
from bench.targets import evaluate


def test_nearest_rank_percentile():
    values = list(range(1, 101))                   # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values[:40], 99) == 40       # under 100 samples: the largest
    assert percentile([7.0], 99) == 7.0


def test_py_spy_stacks_sum_into_self_and_inclusive_shares():
    text = "\n".join([
        "process 1:\"python\";main (/r/services/policyd/service.py:10);plan (/r/services/policyd/enforcer.py:60) 30",
        "process 1:\"python\";main (/r/services/policyd/service.py:12);put (/x/site-packages/nats/js/kv.py:5) 10",
        "main (/r/services/policyd/service.py:10) 10",
        "garbage line",
    ])
    top = summarize(text)
    assert top["samples"] == 50
    assert top["self"][0] == {"function": "plan (services/policyd/enforcer.py)", "samples": 30, "share": 0.6}
    inclusive = {row["function"]: row["samples"] for row in top["inclusive"]}
    assert inclusive["main (services/policyd/service.py)"] == 50       # lines of one function add up
    assert inclusive["put (nats/js/kv.py)"] == 10


def _spread(median: float) -> dict:
    return {"median": median, "min": median, "max": median, "n": 1}


def test_targets_met_missed_and_not_measured():
    ratio = {m: _spread(1.0) for m in ("gbps_1", "gbps_4", "rr_per_s", "p50_us", "p99_us")}
    datapath = {"summary": {"redirect": {"ratio_to": {
        "veth": {**ratio, "gbps_1": _spread(0.96), "p50_us": _spread(1.10)},
        "kernel": {**ratio, "gbps_1": _spread(1.02)},
        "floor": {"ns_rr": _spread(1.4), "ns_bulk": _spread(2.0), "udp_pps": _spread(0.95), "p50_us": _spread(1.0),
                  "gbps_1": _spread(0.97)}}}}}
    pods = {"sizes": {"100": {"summary": {"apply_s": _spread(3.0), "create_per_s": _spread(33.0),
                                          "first_packet_s": _spread(2.9)}},
                      "1000": {"summary": {"apply_s": _spread(21.0), "create_per_s": _spread(48.0),
                                           "first_packet_s": _spread(20.5)}}}}
    cni = {"summary": {"add_total_ms": _spread(120.0), "add_startup_ms": _spread(90.0), "add_work_ms": _spread(30.0),
                       "ratio_to_bridge": _spread(1.7)}}
    encap_ratio = {**ratio, "gbps_4_one_cpu": _spread(1.0)}
    encap = {"summary": {"native": {"ratio_to_underlay": {**encap_ratio, "gbps_1": _spread(0.97),
                                                          "p50_us": _spread(1.08), "gbps_4": _spread(0.80)}},
                         "tunnel": {"ratio_to_underlay": {**encap_ratio, "gbps_4_one_cpu": _spread(0.80)}}}}
    cidr = {"results": [{"peers": 10000, "apply_s": 1.5, "peak_rss_mb": {"policyd": 90.0}, "health_ms": [3.0] * 99,
                         "small_apply_ms": [250.0, 250.0], "left_after_delete": 0}]}
    verdicts = {v["key"]: v["ok"] for v in evaluate(
        {"datapath": datapath, "policy": None, "cplane": None, "pods": pods, "flows": None, "footprint": None,
         "cni": cni, "encap": encap, "cidr_scale": cidr,
         "cluster_policy": {"summary": {"rounds": 50, "p50_ms": 20.0, "p99_ms": 49.0, "target_ms": 50.0,
                                        "met": True}}})}
    assert verdicts == {"datapath_gbps": True, "datapath_p50": False, "floor_ns_rr": True, "floor_ns_bulk": False,
                        "floor_udp_pps": True, "floor_p50_us": True, "floor_gbps_1": False, "policy_10k": None,
                        "cplane_p99": None, "cplane_p99_500": None, "cplane_p99_1000": None, "pods_100": True, "pods_1000": False, "flows": None, "footprint": None, "cni_add": True,
                        "cni_ratio": False, "encap_native": True, "encap_tunnel": False,
                        "cidr_apply_10000": True, "cidr_apply_100000": None, "cidr_rss": None, "cidr_probe": False,
                        "cidr_left": True, "cluster_policy_p99": True}
    cplane = {"summary": {"by_size": {str(n): {"enforced_ms": {"p50": 12.0, "p99": p99, "spread": {"n": 40}}}
                                      for n, p99 in ((500, 19.0), (1000, 31.0))}}}
    at_scale = {v["key"]: v["ok"] for v in evaluate({**dict.fromkeys(("datapath", "policy", "pods", "flows",
                                                                       "footprint", "cni")), "cplane": cplane})}
    assert (at_scale["cplane_p99_500"], at_scale["cplane_p99_1000"]) == (True, False)
    nothing = dict.fromkeys(("datapath", "policy", "cplane", "pods", "flows", "footprint", "cni"))
    assert {v["key"]: v["ok"] for v in evaluate(nothing)}["cni_add"] is None
    assert Spread.of([3, 1, 2]).median == 2


def test_a_ratio_settles_when_its_median_interval_stays_within_five_percent():
    from bench.datapath import settled
    assert settled([1.0, 1.01, 0.99, 1.0, 1.02]) == 3
    assert settled([1.0, 1.1, 0.9, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]) == 8    # wide at first, then narrow
    assert settled([1.0, 2.0, 0.5, 1.5]) is None
    assert settled([1.0, 1.0]) is None                  # fewer than three rounds: never


def test_encap_summary_compares_every_variant_run_with_the_underlay():
    from bench.encap import KERNEL_VARIANTS, VARIANTS, EncapSample, report, summarize as encap_summary

    def sample(gbps: float) -> EncapSample:
        return EncapSample(gbps, gbps, 1000.0, 30.0, 60.0, 31.0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, gbps / 2)

    rates = {"native": 9.0, "tunnel": 8.0, "underlay": 10.0, "kvxlan": 9.5, "kvxlan-md": 7.5}
    rounds = [{"order": list(rates), "samples": {v: sample(g * k) for v, g in rates.items()}} for k in (1, 2)]
    summary = encap_summary(rounds, VARIANTS + KERNEL_VARIANTS)
    assert summary["kvxlan-md"]["ratio_to_underlay"]["gbps_1"].median == 0.75
    assert summary["kvxlan"]["ratio_to_underlay"]["gbps_1"].median == 0.95
    assert summary["tunnel"]["ratio_to_underlay"]["gbps_4_one_cpu"].median == 0.8
    assert summary["tunnel"]["metrics"]["gbps_4_one_cpu"].median == 6.0       # 4.0 and 8.0
    assert "kvxlan-md" in report(summary)
    assert "kvxlan" not in report(encap_summary(rounds, VARIANTS))        # not run: no row
