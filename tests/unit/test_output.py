"""CLI tables: kubectl-style columns, three spaces apart, no trailing blanks."""
from __future__ import annotations

from services.cli.output import labels_text, table


def test_columns_are_aligned_to_the_widest_cell():
    text = table(["NAME", "IP", "AGE"], [["web", "10.200.0.2", "5s"], ["database-1", "10.200.0.10", "12m"]])
    assert text.splitlines() == [
        "NAME         IP            AGE",
        "web          10.200.0.2    5s",
        "database-1   10.200.0.10   12m",
    ]


def test_each_column_starts_at_the_same_offset_on_every_line():
    lines = table(["A", "LONGER-HEADER", "C"], [["xxxxxxxx", "y", "z"], ["", "yy", "zz"]]).splitlines()
    starts = {line.index(cell) for line, cell in zip(lines, ["C", "z", "zz"])}
    assert len(starts) == 1


def test_no_trailing_whitespace_even_with_an_empty_last_cell():
    text = table(["NAME", "LABELS"], [["web", ""], ["a", "app=web"]])
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text.splitlines()[1] == "web"


def test_non_string_cells_are_printed():
    assert table(["ID", "N"], [[256, 3]]).splitlines() == ["ID    N", "256   3"]


def test_headers_alone():
    assert table(["NAME", "IP"], []) == "NAME   IP"


def test_labels_text():
    assert labels_text({"b": "2", "a": "1"}) == "a=1,b=2"
    assert labels_text({}) == "<none>"
