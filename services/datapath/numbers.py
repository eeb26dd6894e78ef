"""Numbers shared with the C side (bpf/lib/*.h). tests/unit/test_shared_numbers.py parses
the headers and checks every value here against its #define."""
from __future__ import annotations

# bpf/lib/common.h: forwarding and drop reasons (>= 130: Cilium's drop reason codes)
REASON_FORWARDED = 0
REASON_REDIRECT_PEER = 1
REASON_ARP_REPLY = 2
DROP_INVALID_SIP = 132
DROP_POLICY = 133
DROP_INVALID = 134
DROP_POLICY_DENY = 181

REASONS = {
    "REASON_FORWARDED": REASON_FORWARDED,
    "REASON_REDIRECT_PEER": REASON_REDIRECT_PEER,
    "REASON_ARP_REPLY": REASON_ARP_REPLY,
    "DROP_INVALID_SIP": DROP_INVALID_SIP,
    "DROP_POLICY": DROP_POLICY,
    "DROP_INVALID": DROP_INVALID,
    "DROP_POLICY_DENY": DROP_POLICY_DENY,
}

REASON_NAMES = {
    REASON_FORWARDED: "to-stack",
    REASON_REDIRECT_PEER: "redirect-peer",
    REASON_ARP_REPLY: "arp-reply",
    DROP_INVALID_SIP: "Invalid source ip",
    DROP_POLICY: "Policy denied",
    DROP_INVALID: "Invalid packet",
    DROP_POLICY_DENY: "Policy denied by denylist",
}

# bpf/lib/common.h: metric directions (Cilium's numbering)
METRIC_INGRESS = 1
METRIC_EGRESS = 2
DIRECTIONS = {"METRIC_INGRESS": METRIC_INGRESS, "METRIC_EGRESS": METRIC_EGRESS}

# bpf/lib/ipcache.h: reserved identities (Cilium's numbering)
IDENTITY_UNKNOWN = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITIES = {"IDENTITY_UNKNOWN": IDENTITY_UNKNOWN, "IDENTITY_HOST": IDENTITY_HOST,
              "IDENTITY_WORLD": IDENTITY_WORLD}


def is_drop(reason: int) -> bool:
    return reason >= 130

# bpf/lib/policy.h: policy entry flags, directions in the key, verdicts
POLICY_DENY = 1
POLICY_AUDIT = 2
POLICY_DEFAULT = 4
POLICY_INGRESS = 0
POLICY_EGRESS = 1
POLICY_FULL_PREFIX = 96
VERDICT_FORWARDED = 0
VERDICT_DROPPED = 1
VERDICT_AUDIT = 2
POLICY = {"POLICY_DENY": POLICY_DENY, "POLICY_AUDIT": POLICY_AUDIT, "POLICY_DEFAULT": POLICY_DEFAULT,
          "POLICY_INGRESS": POLICY_INGRESS, "POLICY_EGRESS": POLICY_EGRESS,
          "POLICY_FULL_PREFIX": POLICY_FULL_PREFIX, "VERDICT_FORWARDED": VERDICT_FORWARDED,
          "VERDICT_DROPPED": VERDICT_DROPPED, "VERDICT_AUDIT": VERDICT_AUDIT}

# bpf/lib/conntrack.h: entry flags
CT_AUDIT = 1
CT_SEEN_REPLY = 2
CONNTRACK = {"CT_AUDIT": CT_AUDIT, "CT_SEEN_REPLY": CT_SEEN_REPLY}
