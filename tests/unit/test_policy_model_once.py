"""A policy's prefixes and weight are worked out once and kept, and working one policy's out
holds up no other policy's (functools.cached_property of Python 3.11 takes one lock for all
instances of a class: a 100,000-peer policy's prefixes, worked out on a worker thread, held
up every other policy's on the event loop for a tenth of a second)."""
import threading

from services.policyd.model import Policy, computed_once
from services.policyd.parse import parse_policy


class Slow:
    def __init__(self, gate: threading.Event | None) -> None:
        self.gate = gate

    @computed_once
    def value(self) -> int:
        if self.gate is not None:
            assert self.gate.wait(30)
        return 7


def test_one_instance_working_its_value_out_holds_up_no_other():
    gate, inside = threading.Event(), threading.Event()
    slow = Slow(gate)
    worker = threading.Thread(target=lambda: (inside.set(), slow.value))
    worker.start()
    try:
        assert inside.wait(30)
        done = threading.Event()
        other = threading.Thread(target=lambda: (Slow(None).value, done.set()))
        other.start()
        assert done.wait(30), "another instance's value waited for the first one's"
        other.join()
    finally:
        gate.set()
        worker.join()
    assert slow.value == 7 and slow.__dict__["value"] == 7


def test_a_policy_keeps_its_prefixes_and_weight():
    assert isinstance(Policy.__dict__["cidrs"], computed_once)
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "a", "namespace": "n"},
                           "spec": {"podSelector": {}, "ingress": [
                               {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                "ports": [{"port": 80}]}]}}).policy
    assert policy.cidrs == {"10.0.0.0/8", "10.1.0.0/16"} and policy.cidrs is policy.cidrs
    assert policy.weight == 1 + 1 + 1
