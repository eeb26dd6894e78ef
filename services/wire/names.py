"""Kubernetes' rules for names and labels, and the kernel's for interface names and MTUs.

Apart from services.wire.manifests (YAML, the typed specs) so that a client that must start
fast (the CNI plugin) checks what a runtime passes by the same rules, without loading them.
"""
from __future__ import annotations

import re

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)\Z")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
MIN_MTU, MAX_MTU = 576, 65535      # IPv4's minimum datagram; veth's maximum


def valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(LABEL_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def valid_ifname(name: str) -> bool:
    """The kernel's rule for an interface name (dev_valid_name): 1-15 bytes, no '/', ':'
    or whitespace, not '.' or '..'."""
    return (0 < len(name.encode()) < 16 and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))
