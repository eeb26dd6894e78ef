"""The headers of a captured packet (Ethernet, IPv4, TCP/UDP/SCTP/ICMPv4) as Hubble's flow
fields: ethernet, IP, l4, and the L4 part of its Summary. Pure; a truncated capture yields
what it holds and nothing more. IPv6 appears only in drop events (the datapath drops it):
its addresses are read, nothing past them.
"""
from __future__ import annotations

import ipaddress
import struct

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPV6_HLEN = 40
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP = 1, 6, 17, 132

# Hubble's TCPFlags fields, in the order its Summary lists them.
TCP_FLAGS = (("SYN", 0x02), ("ACK", 0x10), ("RST", 0x04), ("FIN", 0x01), ("PSH", 0x08),
             ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))

ICMP_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect",
              8: "EchoRequest", 11: "TimeExceeded", 12: "ParameterProblem", 13: "TimestampRequest",
              14: "TimestampReply"}
ICMP_UNREACHABLE = {0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded",
                    9: "NetAdminProhibited", 10: "HostAdminProhibited", 13: "CommAdminProhibited"}


def mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse(data: bytes) -> dict:
    """{"ethernet", "IP", "l4", "summary"} for what DATA holds (each key only when present)."""
    out: dict = {}
    if len(data) < ETH_HLEN:
        return out
    out["ethernet"] = {"source": mac(data[6:12]), "destination": mac(data[0:6])}
    ethertype = struct.unpack_from("!H", data, 12)[0]
    if ethertype == ETH_P_IPV6 and len(data) >= ETH_HLEN + IPV6_HLEN:
        out["IP"] = {"source": str(ipaddress.IPv6Address(data[ETH_HLEN + 8:ETH_HLEN + 24])),
                     "destination": str(ipaddress.IPv6Address(data[ETH_HLEN + 24:ETH_HLEN + 40])),
                     "ipVersion": "IPv6"}
        out["summary"] = "IPv6"
        return out
    if ethertype != ETH_P_IP or len(data) < ETH_HLEN + 20:
        return out
    ip = data[ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    out["IP"] = {"source": str(ipaddress.IPv4Address(ip[12:16])),
                 "destination": str(ipaddress.IPv4Address(ip[16:20])), "ipVersion": "IPv4"}
    out["summary"] = "IPv4"
    fragment_offset = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF
    if ihl < 20 or fragment_offset:
        return out                      # a later fragment has no L4 header
    l4 = _l4(proto, ip[ihl:])
    if l4 is not None:
        out["l4"], out["summary"] = l4
    return out


def _l4(proto: int, seg: bytes) -> tuple[dict, str] | None:
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP) and len(seg) >= 4:
        sport, dport = struct.unpack_from("!HH", seg, 0)
        ports = {"source_port": sport, "destination_port": dport}
        if proto == PROTO_UDP:
            return {"UDP": ports}, "UDP"
        if proto == PROTO_SCTP:
            return {"SCTP": ports}, "SCTP"
        flags = tcp_flags(seg[13] if len(seg) > 13 else 0, seg[12] & 1 if len(seg) > 12 else 0)
        return {"TCP": {**ports, "flags": flags}}, tcp_summary(flags)
    if proto == PROTO_ICMP and len(seg) >= 2:
        icmp = {"type": seg[0], "code": seg[1]}
        return {"ICMPv4": icmp}, f"ICMPv4 {icmp_name(seg[0], seg[1])}"
    return None


def tcp_flags(byte: int, ns: int = 0) -> dict[str, bool]:
    flags = {name: True for name, bit in TCP_FLAGS if byte & bit}
    if ns:
        flags["NS"] = True
    return flags


def tcp_summary(flags: dict[str, bool]) -> str:
    names = [name for name, _ in TCP_FLAGS if flags.get(name)] + (["NS"] if flags.get("NS") else [])
    return "TCP Flags: " + ", ".join(names)


def icmp_name(icmp_type: int, code: int) -> str:
    name = ICMP_TYPES.get(icmp_type, f"Type{icmp_type}")
    if icmp_type == 3:
        return f"{name}({ICMP_UNREACHABLE.get(code, f'Code{code}')})"
    return name


# For an IPv4 header without options (L4 at _L4_AT): the (start, end) ranges of the L4
# header that parse() reads, per protocol.
_L4_AT = ETH_HLEN + 20
_L4_READS = {PROTO_TCP: ((0, 4), (12, 14)), PROTO_UDP: ((0, 4),), PROTO_SCTP: ((0, 4),),
             PROTO_ICMP: ((0, 2),)}


def peers(data: bytes) -> bytes:
    """The packet's two IPv4 addresses, lower first (both directions alike); b"" for
    anything else."""
    if len(data) < ETH_HLEN + 20 or data[12:14] != b"\x08\x00":
        return b""
    a, b = data[26:30], data[30:34]
    return a + b if a <= b else b + a


def shape(data: bytes) -> bytes:
    """The bytes of DATA that parse() depends on: two packets with the same shape parse the
    same. Headers are picked out for the common case (complete IPv4 without options);
    anything else is its own shape, the whole capture (the first byte tells the two apart)."""
    if len(data) < _L4_AT or data[12:14] != b"\x08\x00" or data[ETH_HLEN] != 0x45:
        return b"\x00" + data
    reads = _L4_READS.get(data[ETH_HLEN + 9], ())
    if reads and len(data) < _L4_AT + reads[-1][1]:
        return b"\x00" + data
    # MACs and EtherType; flags and fragment offset; protocol; addresses; the L4 bytes read.
    key = b"\x01" + data[:ETH_HLEN] + data[20:22] + data[23:24] + data[26:34]
    for start, end in reads:
        key += data[_L4_AT + start:_L4_AT + end]
    return key
