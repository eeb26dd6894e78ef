"""Hubble's metric options, in Hubble's own syntax (its --hubble-metrics / Helm
hubble.metrics.enabled items), e.g.

    flow:sourceContext=namespace;destinationContext=pod|ip;labelsContext=source_ip,traffic_direction
    flows-to-world:any-drop;port
    tcp

A metric name, then after ``:`` options separated by ``;``; an option is ``key=value`` or a
bare flag. sourceContext / destinationContext add a ``source`` / ``destination`` label whose
value is the first non-empty of the ``|``-separated contexts; labelsContext adds one label
per ``,``-separated name. Pure parsing: ValueError names what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

# The metrics flowd can count (Hubble's names for them), all enabled by default.
METRICS = ("flow", "drop", "policy", "tcp", "port-distribution", "icmp", "flows-to-world")
CONTEXTS = ("namespace", "pod", "pod-name", "workload", "workload-name", "app", "identity", "ip",
            "reserved-identity")
LABELS = tuple(f"{side}_{what}" for side in ("source", "destination")
               for what in ("ip", "namespace", "pod", "workload", "workload_kind", "app")) + ("traffic_direction",)
FLAGS = {"flows-to-world": ("any-drop", "port", "syn-only")}
CONTEXT_KEYS = ("sourceContext", "destinationContext", "labelsContext")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    source_context: tuple[str, ...] = ()
    destination_context: tuple[str, ...] = ()
    labels_context: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()

    @property
    def context_labels(self) -> tuple[str, ...]:
        """The label names the options add, in front of the metric's own."""
        return (("source",) if self.source_context else ()) + \
            (("destination",) if self.destination_context else ()) + self.labels_context


def parse_metric(text: str) -> MetricSpec:
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a metric such as 'flow' or 'flow:sourceContext=pod', got {text!r}")
    name, _, rest = text.partition(":")
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r} (one of {', '.join(METRICS)})")
    values: dict[str, tuple[str, ...]] = {}
    flags = set()
    for option in filter(None, rest.split(";")):
        key, eq, value = option.partition("=")
        if key in CONTEXT_KEYS:
            if not eq or not value:
                raise ValueError(f"{name}: {key} needs a value")
            if key in values:
                raise ValueError(f"{name}: {key} given twice")
            values[key] = _context(name, key, value)
        elif key in FLAGS.get(name, ()) and not eq:
            flags.add(key)
        else:
            known = ", ".join((*CONTEXT_KEYS, *FLAGS.get(name, ())))
            raise ValueError(f"{name}: unknown option {option!r} (options: {known})")
    return MetricSpec(name, values.get("sourceContext", ()), values.get("destinationContext", ()),
                      values.get("labelsContext", ()), frozenset(flags))


def _context(metric: str, key: str, value: str) -> tuple[str, ...]:
    parts = tuple(value.split("," if key == "labelsContext" else "|"))
    allowed = LABELS if key == "labelsContext" else CONTEXTS
    for part in parts:
        if part not in allowed:
            raise ValueError(f"{metric}: {key}={part!r} is not one of {', '.join(allowed)}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{metric}: {key} names a value twice")
    return parts


def parse_metrics(items: list[str]) -> tuple[MetricSpec, ...]:
    """Every item parsed; a metric named twice is an error (ValueError "[i]: ...")."""
    out: list[MetricSpec] = []
    for i, item in enumerate(items):
        try:
            spec = parse_metric(item)
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
        if any(s.name == spec.name for s in out):
            raise ValueError(f"[{i}]: metric {spec.name!r} is enabled twice")
        out.append(spec)
    return tuple(out)
