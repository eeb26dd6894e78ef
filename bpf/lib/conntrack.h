/* Connection tracking for TCP, UDP and ICMP echo: a connection's first packet goes through
 * policy; its later packets and its replies only look it up here. Owner: endpointd
 * (services/datapath/maps/conntrack.py mirrors these structs; a test compares them). */
#ifndef CAPILLARY_CONNTRACK_H
#define CAPILLARY_CONNTRACK_H

#include "common.h"

#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE 65536
#endif

/* Entry flags. Shared with services/datapath/numbers.py. */
#define CT_AUDIT   1        /* the connection was let through by audit mode */
#define CT_SEEN_REPLY 2

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8   protocol;
	__u8   pad[3];
};

struct ct_entry {
	__u64 created;       /* bpf_ktime_get_ns() */
	__u64 last_seen;
	__u64 packets;       /* both directions */
	__u64 bytes;
	__u32 flags;
	__u32 rule_id;       /* egress rule at the source, the one that allowed it */
};

BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, cap_ct, CT_MAP_SIZE,
		 PIN_ROOT "/ct");

struct l4_tuple {
	__be16 sport;
	__be16 dport;
	__u16  policy_port;  /* host order: destination port, or ICMP type */
	__u8   valid;
};

enum ct_state {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
};

static __always_inline enum ct_state ct_lookup(__be32 saddr, __be32 daddr, __u8 proto,
					       struct l4_tuple *l4, __u32 len)
{
	struct ct_key fwd = { .saddr = saddr, .daddr = daddr, .sport = l4->sport,
			      .dport = l4->dport, .protocol = proto };
	struct ct_key rev = { .saddr = daddr, .daddr = saddr, .sport = l4->dport,
			      .dport = l4->sport, .protocol = proto };
	struct ct_entry *e = cap_ct.lookup(&fwd);
	enum ct_state state = CT_ESTABLISHED;

	if (!e) {
		e = cap_ct.lookup(&rev);
		state = CT_REPLY;
	}
	if (!e)
		return CT_NEW;
	e->last_seen = bpf_ktime_get_ns();
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
	if (state == CT_REPLY)
		e->flags |= CT_SEEN_REPLY;
	return state;
}

static __always_inline void ct_create(__be32 saddr, __be32 daddr, __u8 proto,
				      struct l4_tuple *l4, __u32 len, __u32 flags, __u32 rule_id)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_key key = { .saddr = saddr, .daddr = daddr, .sport = l4->sport,
			      .dport = l4->dport, .protocol = proto };
	struct ct_entry e = { .created = now, .last_seen = now, .packets = 1, .bytes = len,
			      .flags = flags, .rule_id = rule_id };
	cap_ct.update(&key, &e);
}

#endif
