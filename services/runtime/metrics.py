"""Prometheus metrics shared by every service, built on a registry tests can replace."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily


@dataclass
class BusMetrics:
    """Request handling on the bus, labelled by subject and outcome."""

    requests: Counter
    errors: Counter
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "BusMetrics":
        return cls(
            requests=Counter("capillary_bus_requests_total", "Requests handled",
                             ["subject"], registry=registry),
            errors=Counter("capillary_bus_request_errors_total", "Requests answered with an error",
                           ["subject", "code"], registry=registry),
            latency=Histogram("capillary_bus_request_duration_seconds", "Time to answer a request",
                              ["subject"], registry=registry,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
        )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Expose REGISTRY on http://HOST:PORT/metrics from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)


class ScrapeGauges:
    """Gauges read at scrape time from a service's own state: FAMILIES holds (name, help,
    label names, read), where read() returns {label values: value}. A read that raises fails
    the scrape: an unknown value is never reported as 0."""

    def __init__(self, families: list[tuple[str, str, list[str], Callable[[], dict[tuple, float]]]]) -> None:
        self.families = families

    def collect(self):
        out = []
        for name, doc, labels, read in self.families:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in sorted(read().items()):
                family.add_metric(list(values), value)
            out.append(family)
        return out
