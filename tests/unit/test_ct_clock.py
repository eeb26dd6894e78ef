"""The calibration of conntrack's datapath clock, read from /proc/timer_list."""
from __future__ import annotations

from services.datapath import clock

SAMPLE = """Timer List Version: v0.10
HRTIMER_MAX_CLOCK_BASES: 8
now at 10719775578903 nsecs

cpu: 0
 clock 0:
  .base:               pK-error
  .index:      0
  .get_time:   ktime_get
.tick_stopped   : 0
.idle_jiffies   : 4297572174
jiffies: 4297572175

cpu: 1
jiffies: 4297572176
"""


def test_the_time_and_the_first_jiffies_line_make_the_pair():
    assert clock.parse(SAMPLE) == (4297572175, 10719775578903)


def test_a_file_without_either_gives_no_calibration(tmp_path):
    assert clock.parse(SAMPLE.replace("now at", "then at")) is None
    assert clock.parse(SAMPLE.replace("jiffies: ", "jiffies = ")) is None
    assert clock.calibration(tmp_path / "absent") is None
    assert clock.clock_flags(tmp_path / "absent") == []        # the coarse clock, then


def test_the_flags_carry_the_pair(tmp_path):
    path = tmp_path / "timer_list"
    path.write_text(SAMPLE)
    assert clock.clock_flags(path) == ["-DCT_CLOCK_JIFFIES=4297572175ULL", "-DCT_CLOCK_MONO_NS=10719775578903ULL"]
