"""Reading a namespace's default gateway from its /proc/net/route table."""
from __future__ import annotations

import socket
import sys

from services.datapath.netns import gateway_in_table

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def row(iface: str, dst: str, gateway: str, flags: int, mask: str) -> str:
    def hexed(ip: str) -> str:      # the kernel prints each address as a host-order u32
        return f"{int.from_bytes(socket.inet_aton(ip), sys.byteorder):08X}"
    return f"{iface}\t{hexed(dst)}\t{hexed(gateway)}\t{flags:04X}\t0\t0\t0\t{hexed(mask)}\t0\t0\t0"


def test_the_default_route_through_the_named_interface():
    table = "\n".join([HEADER,
                       row("eth1", "0.0.0.0", "10.9.0.1", 0x3, "0.0.0.0"),       # another network's default
                       row("eth0", "10.0.0.1", "0.0.0.0", 0x5, "255.255.255.255"),  # on-link host route
                       row("eth0", "0.0.0.0", "10.0.0.1", 0x3, "0.0.0.0")])
    assert gateway_in_table(table, "eth0") == "10.0.0.1"
    assert gateway_in_table(table, "eth1") == "10.9.0.1"


def test_no_default_route_is_none():
    table = "\n".join([HEADER, row("eth0", "10.0.0.1", "0.0.0.0", 0x5, "255.255.255.255"),
                       row("eth0", "0.0.0.0", "0.0.0.0", 0x1, "0.0.0.0"),         # default, but no gateway
                       row("eth0", "0.0.0.0", "10.0.0.1", 0x2, "0.0.0.0")])       # not up
    assert gateway_in_table(table, "eth0") is None
    assert gateway_in_table(HEADER + "\n", "eth0") is None
