"""Numbers shared between bpf/lib/*.h and services/datapath/numbers.py must be equal, both ways."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.datapath import numbers

BPF_LIB = Path(__file__).resolve().parents[2] / "bpf" / "lib"
_DEFINE = re.compile(r"^\s*#\s*define\s+(?P<name>(?P<prefix>REASON|DROP|METRIC|IDENTITY|POLICY|VERDICT|CT|EVENT|TRACE|AGGREGATION)_\w+)\s+(?P<value>\S+)",
                     re.MULTILINE)

# (header, #define prefixes) -> the Python dict that mirrors them
SHARED = [
    ("common.h", ("REASON", "DROP"), numbers.REASONS),
    ("common.h", ("METRIC",), numbers.DIRECTIONS),
    ("ipcache.h", ("IDENTITY",), numbers.IDENTITIES),
    ("policy.h", ("POLICY", "VERDICT"), numbers.POLICY),
    ("conntrack.h", ("CT",), numbers.CONNTRACK),
    ("events.h", ("EVENT",), numbers.EVENTS),
    ("events.h", ("TRACE",), numbers.TRACES),
    ("events.h", ("AGGREGATION",), numbers.AGGREGATION),
]


def defines(text: str, prefixes: tuple[str, ...]) -> dict[str, int]:
    """Every `#define PREFIX_NAME value` in TEXT; a value that is not an integer literal fails."""
    out = {}
    for m in _DEFINE.finditer(text):
        if m["prefix"] not in prefixes or m["name"].endswith("_MAP_SIZE"):
            continue    # map sizes are build options, not shared numbers
        try:
            out[m["name"]] = int(m["value"], 0)
        except ValueError:
            raise AssertionError(f"#define {m['name']} {m['value']}: not an integer literal") from None
    return out


def differences(c: dict[str, int], py: dict[str, int]) -> list[str]:
    out = [f"{n}: only in C" for n in sorted(c.keys() - py.keys())]
    out += [f"{n}: only in Python" for n in sorted(py.keys() - c.keys())]
    out += [f"{n}: C {c[n]} != Python {py[n]}" for n in sorted(c.keys() & py.keys()) if c[n] != py[n]]
    return out


@pytest.mark.parametrize("header, prefixes, python", SHARED, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_header_and_python_agree(header, prefixes, python):
    c = defines((BPF_LIB / header).read_text(), prefixes)
    assert c, f"no {prefixes} defines found in {header}"
    assert differences(c, python) == []


def test_no_shared_define_lives_in_another_header():
    # a REASON_/DROP_/METRIC_/IDENTITY_ number moved to another header would escape the check
    checked = {h for h, _, _ in SHARED}
    for header in sorted(BPF_LIB.glob("*.h")):
        if header.name not in checked:
            assert defines(header.read_text(), ("REASON", "DROP", "METRIC", "IDENTITY", "POLICY",
                                                "VERDICT", "CT", "EVENT", "TRACE", "AGGREGATION")) == {}, header.name


def test_names_cover_their_numbers():
    assert set(numbers.POLICY_MATCH_NAMES) == {v for k, v in numbers.POLICY.items() if k.startswith("POLICY_MATCH_")}
    points = {v for k, v in numbers.TRACES.items() if not k.startswith("TRACE_REASON_")}
    assert set(numbers.TRACE_NAMES) == set(numbers.TRACE_POINTS) == points
    assert set(numbers.AGGREGATION_LEVELS.values()) == set(numbers.AGGREGATION.values())


def test_every_reason_has_a_name_and_drops_are_drops():
    assert set(numbers.REASON_NAMES) == set(numbers.REASONS.values())
    for name, value in numbers.REASONS.items():
        assert numbers.is_drop(value) is name.startswith("DROP_"), name


# ---- the check itself can fail ---------------------------------------------------------------

HEADER = """
#define REASON_FORWARDED   0   /* comment */
#define DROP_POLICY        133
#define METRIC_INGRESS     1
#define IDENTITY_HOST      0x1
"""


def test_parser_reads_decimal_and_hex_and_filters_by_prefix():
    assert defines(HEADER, ("REASON", "DROP")) == {"REASON_FORWARDED": 0, "DROP_POLICY": 133}
    assert defines(HEADER, ("IDENTITY",)) == {"IDENTITY_HOST": 1}


def test_a_changed_number_is_reported():
    c = defines(HEADER.replace("133", "134"), ("REASON", "DROP"))
    assert differences(c, {"REASON_FORWARDED": 0, "DROP_POLICY": 133}) == ["DROP_POLICY: C 134 != Python 133"]


def test_a_number_on_one_side_only_is_reported():
    c = defines(HEADER, ("REASON", "DROP"))
    assert differences(c, {"REASON_FORWARDED": 0, "DROP_INVALID": 134}) == [
        "DROP_POLICY: only in C", "DROP_INVALID: only in Python"]


def test_a_define_that_is_not_a_literal_fails():
    with pytest.raises(AssertionError, match="DROP_X"):
        defines("#define DROP_X (DROP_POLICY + 1)\n", ("DROP",))


def test_the_ipcache_source_the_datapath_reads_is_routeds():
    from services.routed.service import SOURCES
    found = re.search(r"^#define IPCACHE_SOURCE_REMOTE\s+(\d+)", (BPF_LIB / "ipcache.h").read_text(), re.MULTILINE)
    assert found and int(found[1]) == SOURCES["remote"]
