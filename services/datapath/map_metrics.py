"""Cilium's BPF map metrics for the maps a service owns or writes, read at scrape time:

- cilium_bpf_map_ops_total{map_name, operation, outcome}: every update and delete this
  process made through services.datapath.pinned (outcome success or fail);
- cilium_bpf_map_pressure{map_name}: entries / capacity of each map the service owns;
- cilium_bpf_map_capacity{map_group}: the capacity of each of those maps.

map_name and map_group are the map's pin name (policy, ipcache, ct, endpoints), as Cilium's
are its maps' pin names.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.datapath.pinned import map_ops


class MapOpsCollector:
    def collect(self):
        family = CounterMetricFamily("cilium_bpf_map_ops", "Number of eBPF map operations performed",
                                     labels=["map_name", "operation", "outcome"])
        for (name, operation, outcome), count in sorted(map_ops().items()):
            family.add_metric([name, operation, outcome], count)
        return [family]


class MapPressureCollector:
    def __init__(self, maps: dict[str, tuple[Callable[[], int], int]]) -> None:
        """MAPS: pin name -> (its entries now, its capacity)."""
        self.maps = maps

    def collect(self):
        pressure = GaugeMetricFamily("cilium_bpf_map_pressure", "Fill percentage of map, tagged by map name",
                                     labels=["map_name"])
        capacity = GaugeMetricFamily("cilium_bpf_map_capacity", "Capacity of map, tagged by map group",
                                     labels=["map_group"])
        for name, (entries, size) in sorted(self.maps.items()):
            pressure.add_metric([name], entries() / size)
            capacity.add_metric([name], size)
        return [pressure, capacity]
