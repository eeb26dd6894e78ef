/* Connection tracking for TCP, UDP and ICMP echo: a connection's first packet goes through
 * policy; its later packets and its replies only look it up here. Owner: endpointd
 * (services/datapath/maps/conntrack.py mirrors these structs; a test compares them).
 *
 * The two directions of a connection usually run on two CPUs (a request on the client's,
 * its reply on the server's), and both look up the same entry. So an entry is laid out in
 * cache lines by who writes them: the map's own header and the key (line 0) and the shared
 * fields (line 1) are read by both directions and written only when something changes (a
 * flag, last_seen at most once per CT_TOUCH_NS); each direction ("way") has a line of its
 * own (lines 2 and 3) for its counts, which the CPU that sends that direction adds to.
 * (The LRU hash's element header is 48 bytes and the key 16, so the value starts at 64 and
 * a 192-byte value makes 256-byte elements: every line is one element's.) */
#ifndef CAPILLARY_CONNTRACK_H
#define CAPILLARY_CONNTRACK_H

#include "common.h"
#include "endpoints.h"

#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE 65536
#endif

/* Entry flags. Shared with services/datapath/numbers.py. */
#define CT_AUDIT   1        /* the connection was let through by audit mode */
#define CT_SEEN_REPLY 2
#define CT_CLOSING 4        /* a FIN or RST was seen */

/* How long an idle entry stands for a connection; past that the next packet is a new
 * connection and meets policy again. Seconds, as Cilium's defaults. */
#define CT_LIFETIME_TCP     21600
#define CT_LIFETIME_CLOSING 10
#define CT_LIFETIME_OTHER   60
/* last_seen is moved on when it is at least this old (ns): an entry's idle time is known to
 * within it, and a busy connection writes its entry once a second, not once a packet. */
#define CT_TOUCH_NS 1000000000

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* ct_entry.reported[]: what trace events were already sent for this connection, one slot
 * per (program, packet direction): CT_SLOT_* | CT_SLOT_REPLY. Low 8 bits: the TCP flags
 * reported so far; CT_REPORTED_PACKET: some packet was reported. Shared with numbers.py. */
#define CT_SLOT_FROM_CONTAINER 0
#define CT_SLOT_TO_CONTAINER   2
#define CT_SLOT_REPLY          1
#define CT_REPORTED_PACKET     0x100

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8   protocol;
	__u8   pad[3];
};

/* One direction of a connection: way 0 is the direction it was opened in, way 1 its
 * replies. Its counts (atomic adds: only the CPUs sending this direction write the line, one
 * at a time as a rule), and what delivering its packets needs from cap_endpoints, copied
 * when the endpoint map's generation was GEN (lib/endpoints.h): while the generation is the
 * same, the endpoint map has not changed since, and an established packet needs neither
 * endpoint lookup. */
struct ct_way {
	__u64 packets;
	__u64 bytes;
	__u64 gen;           /* cap_endpoints_gen when what follows was copied; 0: never */
	__u32 from_ifindex;  /* the source endpoint's lxc device (anti-spoofing); 0: not a local pod */
	__u32 to_ifindex;    /* the destination endpoint's lxc device; 0: not a local pod */
	__u16 from_endpoint; /* the source endpoint's id (its tx counts) */
	__u16 to_endpoint;   /* the destination endpoint's id (its rx counts) */
	__u8  host_mac[6];   /* the destination's gateway MAC (its lxc device's) */
	__u8  pod_mac[6];    /* the destination's eth0 */
	__u8  pad[16];
};

struct ct_entry {
	__u64 created;       /* bpf_ktime_get_ns() */
	__u64 last_seen;     /* within CT_TOUCH_NS of the last packet */
	__u32 flags;
	__u32 rule_id;       /* egress rule at the source, the one that allowed it */
	__u16 reported[4];   /* trace aggregation state, see CT_SLOT_* (races: a duplicate trace) */
	__u8  pad[32];
	struct ct_way way[2];
};

_Static_assert(sizeof(struct ct_way) == 64, "a way is one cache line");
_Static_assert(sizeof(struct ct_entry) == 192 && __builtin_offsetof(struct ct_entry, way) == 64,
	       "the shared fields and each way on lines of their own");

BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, cap_ct, CT_MAP_SIZE,
		 PIN_ROOT "/ct");

struct l4_tuple {
	__be16 sport;
	__be16 dport;
	__u16  policy_port;  /* host order: destination port, or ICMP type */
	__u8   valid;
	__u8   tcp_flags;    /* TCP: the flags byte (FIN 0x01 ... CWR 0x80); else 0 */
};

enum ct_state {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
};

/* Conntrack's clock: CLOCK_MONOTONIC, within a tick either way, the clock readers compare
 * with. Read from jiffies, which the verifier inlines as one load, turned into nanoseconds
 * with the calibration pair the loader passes (services/datapath/clock.py: jiffies and
 * CLOCK_MONOTONIC read together when this was compiled). The timekeeper the coarse clock
 * reads is written on every tick by another CPU: a helper call and far cache lines on every
 * packet, a fifth of an established packet's time. Without a calibration (or a HZ that does
 * not divide a second) the coarse clock, at tick resolution too. Either way an entry written
 * from outside with a precise reading may be a tick ahead: idle times are signed. */
#if defined(CT_CLOCK_JIFFIES) && defined(CT_CLOCK_MONO_NS) && defined(CONFIG_HZ) && \
	(1000000000 % CONFIG_HZ) == 0
static __always_inline __u64 ct_clock(void)
{
	return CT_CLOCK_MONO_NS + (bpf_jiffies64() - CT_CLOCK_JIFFIES) * (1000000000ULL / CONFIG_HZ);
}
#else
static __always_inline __u64 ct_clock(void)
{
	return bpf_ktime_get_coarse_ns();
}
#endif

static __always_inline __s64 ct_idle(struct ct_entry *e, __u64 now)
{
	return (__s64)(now - e->last_seen);
}

static __always_inline int ct_expired(struct ct_entry *e, __u8 proto, __u64 now)
{
	__s64 lifetime = proto != IPPROTO_TCP ? CT_LIFETIME_OTHER :
			 (e->flags & CT_CLOSING) ? CT_LIFETIME_CLOSING : CT_LIFETIME_TCP;
	return ct_idle(e, now) > lifetime * 1000000000LL;
}

/* ICMP types with a conntrack entry: an echo request makes one, its reply matches it. */
#ifndef ICMP_ECHOREPLY
#define ICMP_ECHOREPLY 0
#endif
#ifndef ICMP_ECHO
#define ICMP_ECHO      8
#endif

/* Which of a packet's two keys may name its connection: its own (it was sent the way the
 * connection was opened) and the reverse one (it is a reply). Both for TCP, UDP and SCTP.
 * ICMP echo carries the identifier in both ports, so its keys alone cannot tell a request
 * from a reply: a request only matches an entry of its own direction and a reply only the
 * reverse one, so an echo request sent back the other way is never taken for a reply. */
static __always_inline int ct_may_forward(__u8 proto, struct l4_tuple *l4)
{
	return proto != IPPROTO_ICMP || l4->policy_port == ICMP_ECHO;
}

static __always_inline int ct_may_reply(__u8 proto, struct l4_tuple *l4)
{
	return proto != IPPROTO_ICMP || l4->policy_port == ICMP_ECHOREPLY;
}

/* Whether a packet that may be either way of its connection is more likely a reply: its
 * source port is below its destination's. A server's port is as a rule below the client's
 * (ephemeral ports start at 32768), so a request goes from the high port to the low one and
 * its reply the other way. Only the order of ct_find's two lookups follows it. */
static __always_inline int ct_reply_likely(struct l4_tuple *l4)
{
	return bpf_ntohs(l4->sport) < bpf_ntohs(l4->dport);
}

/* The live entry of the packet's connection and whether the packet is a reply; NULL (and
 * CT_NEW) when there is none or it expired. Touches nothing.
 * A packet of TCP, UDP or SCTP may be either way: its own key and the reverse one are both
 * looked up, the likelier first (ct_reply_likely), so an established packet as a rule costs
 * one lookup. Both keys live at once only when the same two ports opened a connection each
 * way (the second by a bare SYN, or over UDP); both passed policy, and a packet then counts
 * to whichever is found first, its reply's when its ports say reply (as Cilium, which looks
 * the reply up first). */
static __always_inline enum ct_state ct_find(__be32 saddr, __be32 daddr, __u8 proto,
					     struct l4_tuple *l4, __u64 now, struct ct_entry **entry)
{
	struct ct_key fwd = { .saddr = saddr, .daddr = daddr, .sport = l4->sport,
			      .dport = l4->dport, .protocol = proto };
	struct ct_key rev = { .saddr = daddr, .daddr = saddr, .sport = l4->dport,
			      .dport = l4->sport, .protocol = proto };
	int may_fwd = ct_may_forward(proto, l4), may_rev = ct_may_reply(proto, l4);
	int rev_first = may_rev && (!may_fwd || ct_reply_likely(l4));
	enum ct_state state = rev_first ? CT_REPLY : CT_ESTABLISHED;
	struct ct_entry *e = 0;

	*entry = 0;
	if (rev_first ? may_rev : may_fwd)
		e = cap_ct.lookup(rev_first ? &rev : &fwd);
	if (!e && (rev_first ? may_fwd : may_rev)) {
		e = cap_ct.lookup(rev_first ? &fwd : &rev);
		state = rev_first ? CT_ESTABLISHED : CT_REPLY;
	}
	if (!e || ct_expired(e, proto, now))
		return CT_NEW;
	*entry = e;
	return state;
}

/* The connection this packet belongs to, as ct_find, except that a bare SYN always starts a
 * new connection (so a reused 4-tuple meets today's policy). Touches nothing: the caller
 * accounts the packet (ct_account) once it knows the packet may pass. Invariant:
 * CT_ESTABLISHED and CT_REPLY are only returned for a live entry of a connection whose first
 * packet passed policy; an idle or closed entry expires. */
static __always_inline enum ct_state ct_open(__be32 saddr, __be32 daddr, __u8 proto,
					     struct l4_tuple *l4, __u64 now, struct ct_entry **entry)
{
	*entry = 0;
	if (proto == IPPROTO_TCP && (l4->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_NEW;
	return ct_find(saddr, daddr, proto, l4, now, entry);
}

/* The way of entry E a packet in STATE (CT_ESTABLISHED or CT_REPLY) travels. */
static __always_inline struct ct_way *ct_way(struct ct_entry *e, enum ct_state state)
{
	return state == CT_REPLY ? &e->way[1] : &e->way[0];
}

/* Account a packet of LEN bytes in STATE to its live entry E: its way's counts, last_seen
 * (at most once per CT_TOUCH_NS) and the flags a reply or a FIN/RST sets. */
static __always_inline void ct_account(struct ct_entry *e, enum ct_state state, struct l4_tuple *l4,
				       __u32 len, __u64 now)
{
	struct ct_way *w = ct_way(e, state);

	__sync_fetch_and_add(&w->packets, 1);
	__sync_fetch_and_add(&w->bytes, len);
	if (ct_idle(e, now) >= CT_TOUCH_NS)
		e->last_seen = now;
	if (state == CT_REPLY && !(e->flags & CT_SEEN_REPLY))
		e->flags |= CT_SEEN_REPLY;
	if ((l4->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) && !(e->flags & CT_CLOSING))
		e->flags |= CT_CLOSING;
}

/* The live entry of a packet already counted (ct_find, without the bare-SYN rule): for a
 * second look at it. */
static __always_inline enum ct_state ct_peek(__be32 saddr, __be32 daddr, __u8 proto,
					     struct l4_tuple *l4, struct ct_entry **entry)
{
	return ct_find(saddr, daddr, proto, l4, ct_clock(), entry);
}

/* Copy into way W what delivery needs: the source endpoint's device and id (0 and 0 for a
 * source outside the node's pods) and the destination endpoint DST, as read at generation GEN
 * of the endpoint map. Written only when the generation moved. Two CPUs copying the same way
 * at once copy the same thing; a packet reading it during a copy may take the previous
 * generation's values (as a packet that looked the endpoints up just before the change would). */
static __always_inline void ct_remember(struct ct_way *w, __u64 gen, __u32 from_ifindex,
					__u16 from_endpoint, const struct endpoint_info *dst)
{
	if (w->gen == gen)
		return;
	w->from_ifindex = from_ifindex;
	w->to_ifindex = dst->ifindex;
	w->from_endpoint = from_endpoint;
	w->to_endpoint = dst->endpoint_id;
	__builtin_memcpy(w->host_mac, dst->host_mac, ETH_ALEN);
	__builtin_memcpy(w->pod_mac, dst->pod_mac, ETH_ALEN);
	asm volatile("" ::: "memory");   /* the generation last (x86 keeps stores in order) */
	w->gen = gen;
}

/* The reported[] bits a packet in SLOT stands for. */
static __always_inline __u16 ct_report_bits(struct l4_tuple *l4)
{
	return CT_REPORTED_PACKET | l4->tcp_flags;
}

/* Whether a trace of this packet would be news for entry E in SLOT: the first packet of its
 * direction, or a TCP flag not reported yet. Records nothing. */
static __always_inline int ct_report_due(struct ct_entry *e, __u32 slot, struct l4_tuple *l4)
{
	__u16 bits = ct_report_bits(l4), seen = e->reported[slot & 3];

	return (seen | bits) != seen;
}

/* Whether a trace of this packet is news for entry E in SLOT (ct_report_due), recording it
 * as reported. No entry: always. */
static __always_inline int ct_report(struct ct_entry *e, __u32 slot, struct l4_tuple *l4)
{
	if (!e)
		return 1;
	if (!ct_report_due(e, slot, l4))
		return 0;
	e->reported[slot & 3] |= ct_report_bits(l4);
	return 1;
}

/* What policy decided about a new connection, for its entry. */
struct ct_new {
	__u32 flags;         /* CT_AUDIT when audit mode let it through */
	__u32 rule_id;
	__u32 slot;          /* CT_SLOT_* of the program that saw (and traced) its first packet */
};

static __always_inline void ct_create(__be32 saddr, __be32 daddr, __u8 proto,
				      struct l4_tuple *l4, __u32 len, const struct ct_new *n)
{
	__u64 now = ct_clock();
	struct ct_key key = { .saddr = saddr, .daddr = daddr, .sport = l4->sport,
			      .dport = l4->dport, .protocol = proto };
	struct ct_entry e = { .created = now, .last_seen = now, .flags = n->flags,
			      .rule_id = n->rule_id };

	if (!ct_may_forward(proto, l4))
		return;              /* an echo reply opens nothing: only a request has replies */
	e.reported[n->slot & 3] = ct_report_bits(l4);
	e.way[0].packets = 1;
	e.way[0].bytes = len;
	cap_ct.update(&key, &e);
}

#endif
