"""Printing for the CLI: kubectl-style tables, JSON and YAML."""
from __future__ import annotations

import json
import sys
import time

import yaml


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def dump(obj, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2, sort_keys=False)
    return yaml.safe_dump(obj, sort_keys=False).rstrip()


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def age(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
