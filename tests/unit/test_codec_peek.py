"""codec.peek: a few fields of a large body, read without decoding the rest (what the bus
orders policy applies by), and nothing at all from a body that is not such a map."""
import msgpack

from services.wire import codec
from services.wire.messages import Apply

META = {"name": "partners", "namespace": "allow"}


def _apply(document: dict) -> bytes:
    return codec.encode(Apply(document).to_wire())


def test_the_fields_are_read_wherever_they_sit_in_the_map():
    spec = {"ingress": [{"from": [{"ipBlock": {"cidr": f"10.0.{i // 256}.{i % 256}/32"}} for i in range(5000)]}]}
    first = _apply({"kind": "NetworkPolicy", "metadata": META, "spec": spec})
    last = _apply({"spec": spec, "metadata": META, "kind": "NetworkPolicy"})
    for data in (first, last):
        assert codec.peek(data, ("document",), ("kind", "metadata")) == {"kind": "NetworkPolicy", "metadata": META}


def test_missing_fields_are_left_out():
    assert codec.peek(_apply({"metadata": META}), ("document",), ("kind", "metadata")) == {"metadata": META}


def test_a_body_without_the_path_or_not_msgpack_gives_nothing():
    for data in (b"", b"\xc1", b"\x91\x01", codec.encode({"document": [1, 2]}), codec.encode({"other": {}}),
                 b"\x81\xa8document\x82\xa4kind",                       # cut short
                 msgpack.packb({"document": {"kind": msgpack.ExtType(3, b"x")}}),
                 b"\x81\xa8document" + b"\x91" * 100_000):            # nested past any limit
        assert codec.peek(data, ("document",), ("kind", "metadata")) == {}, data[:20]
