"""Prometheus view of the datapath's per-CPU counters (cap_metrics), read at scrape time.

Names follow Cilium's agent metrics: cilium_forward_count_total / cilium_forward_bytes_total
and cilium_drop_count_total / cilium_drop_bytes_total with reason and direction labels.
"""
from __future__ import annotations

from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from services.datapath.maps.metrics import MetricsMap
from services.datapath.numbers import METRIC_INGRESS, REASON_NAMES, is_drop
from services.datapath.pinned import MapError


class DatapathCollector:
    def __init__(self, bpf_root: Path) -> None:
        self.bpf_root = bpf_root
        self._map: MetricsMap | None = None

    def _open(self) -> MetricsMap | None:
        if self._map is None:
            try:
                self._map = MetricsMap(self.bpf_root)
            except MapError:
                return None     # endpointd has not created it yet
        return self._map

    def collect(self):
        fwd = CounterMetricFamily("cilium_forward_count", "Packets forwarded by the datapath",
                                  labels=["direction", "path"])
        fwd_b = CounterMetricFamily("cilium_forward_bytes", "Bytes forwarded by the datapath",
                                    labels=["direction", "path"])
        drop = CounterMetricFamily("cilium_drop_count", "Packets dropped by the datapath",
                                   labels=["reason", "direction"])
        drop_b = CounterMetricFamily("cilium_drop_bytes", "Bytes dropped by the datapath",
                                     labels=["reason", "direction"])
        m = self._open()
        if m is not None:
            for c in m.nonzero():
                direction = "INGRESS" if c.direction == METRIC_INGRESS else "EGRESS"
                name = REASON_NAMES.get(c.reason, str(c.reason))
                if is_drop(c.reason):
                    drop.add_metric([name, direction], c.packets)
                    drop_b.add_metric([name, direction], c.bytes)
                else:
                    fwd.add_metric([direction, name], c.packets)
                    fwd_b.add_metric([direction, name], c.bytes)
        return [fwd, fwd_b, drop, drop_b]
