"""Where every datapath event went, so that none vanishes unnoticed.

Invariant (at rest, i.e. once `read` has caught up with the ring and the queue is empty):
    generated == published + lost
    generated = emitted by the datapath + lost because the ring was full
    lost      = ring full + queue full (publish backpressure) + undecodable + publish failed
All counts start when this flowd started: the datapath's relative to a baseline taken then,
plus the records a previous flowd left unread in the (pinned) ring, which this one reads.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.datapath.maps.events import Stats

# Hubble's names for where events are lost (hubble_lost_events_total{source}).
SOURCE_RING = "perf_event_ring_buffer"      # the datapath's ring (ours is a BPF ring buffer)
SOURCE_QUEUE = "observer_events_queue"      # between the ring reader and publishing
SOURCE_HISTORY = "hubble_ring_buffer"       # pushed out of the history


@dataclass
class Accounting:
    ring: Callable[[], Stats]                 # the datapath's counts since the baseline
    read: Callable[[], int]                   # records taken from the ring
    queue_full: int = 0
    undecodable: int = 0
    publish_failed: int = 0
    published: int = 0

    def counters(self, history_overwritten: int) -> dict[str, int]:
        ring = self.ring()
        lost_publish = self.queue_full + self.publish_failed
        lost = ring.lost + lost_publish + self.undecodable
        return {
            "flows_generated": ring.emitted + ring.lost,
            "flows_published": self.published,
            "flows_lost": lost,
            "lost_ring_full": ring.lost,
            "lost_publish": lost_publish,
            "lost_undecodable": self.undecodable,
            "events_read": self.read(),
            "events_emitted": ring.emitted,
            "history_overwritten": history_overwritten,
        }

    def lost_by_source(self, history_overwritten: int) -> dict[str, int]:
        return {SOURCE_RING: self.ring().lost, SOURCE_QUEUE: self.queue_full + self.publish_failed,
                SOURCE_HISTORY: history_overwritten}
