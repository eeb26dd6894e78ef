"""The fuzzing tier: Hypothesis targets for every place input enters capillary.

CI runs the "ci" profile: derandomized (a fixed seed, so every run tries the same cases),
no example database, and each target's own budget of cases. CAPILLARY_FUZZ=soak multiplies
the budgets by 20 and draws fresh cases on every run (for `make soak`). Every crash found
is kept as an explicit example (@example) on its target, and in tests/unit/test_input_bounds.py.

At the end of a run the number of cases each target tried is printed ("fuzz cases").
"""
from __future__ import annotations

import collections
import os

import pytest

from hypothesis import HealthCheck, settings

SOAK = os.environ.get("CAPILLARY_FUZZ") == "soak"
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("soak", derandomize=False, **_COMMON)
settings.load_profile("soak" if SOAK else "ci")

CASES: collections.Counter[str] = collections.Counter()


def budget(n: int) -> int:
    """A target's number of cases: N in CI, 20 N in a soak."""
    return n * 20 if SOAK else n


def count(target: str) -> None:
    CASES[target] += 1


def pytest_collection_modifyitems(items) -> None:
    """A soak runs as long as its budget needs: no per-test timeout."""
    if SOAK:
        for item in items:
            if "tests/fuzz/" in str(item.fspath):
                item.add_marker(pytest.mark.timeout(0))


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES:
        terminalreporter.section("fuzz cases")
        for target, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{target:<40} {n:>7}")
        terminalreporter.write_line(f"{'total':<40} {sum(CASES.values()):>7}")
