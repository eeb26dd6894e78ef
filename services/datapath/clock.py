"""Conntrack's clock in the datapath: jiffies, read as CLOCK_MONOTONIC nanoseconds.

Every conntrack lookup needs the time (is the entry still live? is last_seen a second old?).
bpf_ktime_get_coarse_ns() is a helper call that reads the timekeeper's cache lines, which
the timer interrupt writes on another CPU every tick: about a fifth of an established
packet's time in from_container (docs/benchmarks.md 1e). bpf_jiffies64() is inlined by the
verifier as one load. The programs turn jiffies into nanoseconds with a calibration taken
when they are compiled: the pair (jiffies, CLOCK_MONOTONIC ns) read together from
/proc/timer_list. Jiffies and CLOCK_MONOTONIC are kept in step by the kernel (the tick
advances jiffies from the monotonic clock), so the programs' clock stays within a tick of
CLOCK_MONOTONIC, either way, for as long as the kernel runs; that is the bound the stamps'
readers (services/datapath/maps/conntrack.py, tests) already allow for the coarse clock.
Without a calibration (no /proc/timer_list, a kernel whose HZ does not divide a second)
the programs read the coarse clock as before.
"""
from __future__ import annotations

import re
from pathlib import Path

TIMER_LIST = Path("/proc/timer_list")
_NOW = re.compile(r"^now at (\d+) nsecs$", re.M)
_JIFFIES = re.compile(r"^\s*jiffies: (\d+)$", re.M)


def parse(text: str) -> tuple[int, int] | None:
    """(jiffies, CLOCK_MONOTONIC ns) from the text of /proc/timer_list, or None."""
    now, jiffies = _NOW.search(text), _JIFFIES.search(text)
    if not now or not jiffies:
        return None
    return int(jiffies.group(1)), int(now.group(1))


def calibration(path: Path = TIMER_LIST) -> tuple[int, int] | None:
    """A (jiffies, CLOCK_MONOTONIC ns) pair of this moment, or None when unreadable. The file
    prints the time first and jiffies microseconds after it, so the jiffy it names began
    less than a tick before that time (or just after it): the pair agrees within a tick."""
    try:
        return parse(path.read_text())
    except OSError:
        return None


def clock_flags(path: Path = TIMER_LIST) -> list[str]:
    """The -D flags that give bpf/lib/conntrack.h its calibration (none: the coarse clock)."""
    pair = calibration(path)
    if pair is None:
        return []
    jiffies, mono_ns = pair
    return [f"-DCT_CLOCK_JIFFIES={jiffies}ULL", f"-DCT_CLOCK_MONO_NS={mono_ns}ULL"]
