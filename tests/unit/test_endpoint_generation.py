"""The endpoint map's generation (cap_endpoints_gen) only moves forward, to a value never
used before: conntrack's copies of endpoint entries are true exactly while it is the one
they were copied at."""
from services.datapath.maps.endpoints import next_generation


def test_the_clock_when_it_is_ahead():
    assert next_generation(0, 5_000) == 5_000
    assert next_generation(4_999, 5_000) == 5_000


def test_one_more_when_the_clock_is_not_ahead():
    assert next_generation(5_000, 5_000) == 5_001     # two changes within one clock tick
    assert next_generation(9_000, 5_000) == 9_001     # a value from a clock further on
