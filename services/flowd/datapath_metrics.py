"""Prometheus view of the datapath's per-CPU counters (cap_metrics), read at scrape time.

Names and labels follow Cilium's agent metrics: cilium_forward_count_total /
cilium_forward_bytes_total{direction} and cilium_drop_count_total /
cilium_drop_bytes_total{reason, direction}. Which way a forwarded packet went (the forward
reason: to an endpoint, to the stack, ...), which Cilium does not label, is in
capillary_forward_count_total / capillary_forward_bytes_total{direction, path}. Per
endpoint (cap_ep_metrics), which Cilium has no metric of its own for:
capillary_endpoint_packets_total / capillary_endpoint_bytes_total{endpoint, namespace, pod,
direction} of every pod flowd knows that has sent or received a packet, where ingress is
into the pod and egress out of it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from services.datapath.maps.metrics import EndpointMetricsMap, MetricsMap
from services.datapath.numbers import METRIC_INGRESS, REASON_NAMES, is_drop
from services.datapath.pinned import MapError


class DatapathCollector:
    def __init__(self, bpf_root: Path, pods: Callable[[], dict[int, tuple[str, str]]]) -> None:
        """PODS: endpoint id -> (namespace, pod name), for the per-endpoint labels."""
        self.bpf_root = bpf_root
        self.pods = pods
        self._map: MetricsMap | None = None
        self._ep_map: EndpointMetricsMap | None = None

    def _open(self) -> MetricsMap | None:
        if self._map is None:
            try:
                self._map = MetricsMap(self.bpf_root)
                self._ep_map = EndpointMetricsMap(self.bpf_root)
            except MapError:
                return None     # endpointd has not created them yet
        return self._map

    def collect(self):
        fwd = CounterMetricFamily("cilium_forward_count", "Total forwarded packets", labels=["direction"])
        fwd_b = CounterMetricFamily("cilium_forward_bytes", "Total forwarded bytes", labels=["direction"])
        path = CounterMetricFamily("capillary_forward_count", "Packets forwarded by the datapath, by path",
                                   labels=["direction", "path"])
        path_b = CounterMetricFamily("capillary_forward_bytes", "Bytes forwarded by the datapath, by path",
                                     labels=["direction", "path"])
        drop = CounterMetricFamily("cilium_drop_count", "Packets dropped by the datapath",
                                   labels=["reason", "direction"])
        drop_b = CounterMetricFamily("cilium_drop_bytes", "Bytes dropped by the datapath",
                                     labels=["reason", "direction"])
        families = [fwd, fwd_b, path, path_b, drop, drop_b]
        forwarded: dict[str, list[int]] = {}
        m = self._open()
        if m is not None:
            for c in m.nonzero():
                direction = "INGRESS" if c.direction == METRIC_INGRESS else "EGRESS"
                name = REASON_NAMES.get(c.reason, str(c.reason))
                if is_drop(c.reason):
                    drop.add_metric([name, direction], c.packets)
                    drop_b.add_metric([name, direction], c.bytes)
                else:
                    path.add_metric([direction, name], c.packets)
                    path_b.add_metric([direction, name], c.bytes)
                    total = forwarded.setdefault(direction, [0, 0])
                    total[0] += c.packets
                    total[1] += c.bytes
            for direction, (packets, octets) in sorted(forwarded.items()):
                fwd.add_metric([direction], packets)
                fwd_b.add_metric([direction], octets)
            families += self._endpoints()
        return families

    def _endpoints(self) -> list[CounterMetricFamily]:
        labels = ["endpoint", "namespace", "pod", "direction"]
        packets = CounterMetricFamily("capillary_endpoint_packets", "Packets into (ingress) and out of "
                                      "(egress) each pod, counted by the datapath", labels=labels)
        octets = CounterMetricFamily("capillary_endpoint_bytes", "Bytes into (ingress) and out of (egress) "
                                     "each pod, counted by the datapath", labels=labels)
        try:
            counted = {c.endpoint_id: c for c in self._ep_map.all()}
        except MapError:
            return [packets, octets]        # unreadable: no figures rather than zeros
        for endpoint_id, (namespace, name) in sorted(self.pods().items()):
            c = counted.get(endpoint_id)
            if c is None:
                continue        # nothing yet, or the pod went (its counts were zeroed)
            for direction, p, b in (("ingress", c.rx_packets, c.rx_bytes), ("egress", c.tx_packets, c.tx_bytes)):
                packets.add_metric([str(c.endpoint_id), namespace, name, direction], p)
                octets.add_metric([str(c.endpoint_id), namespace, name, direction], b)
        return [packets, octets]
