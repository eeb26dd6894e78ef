/* Datapath events for flowd: trace, drop and policy-verdict events in one BPF ring buffer,
 * with Cilium's monitor numbering. Owner: flowd (bpf/flowd_maps.c creates and pins the ring
 * and its stats; services/datapath/maps/events.py mirrors these structs; a test compares
 * them). flowd decodes each event into a Hubble-style flow (services/flowd/decode.py).
 *
 * Build-time options:
 *   EVENTS_RING_BYTES    ring size in bytes (a power of two, >= 4096)
 *   EVENTS_AGGREGATION   AGGREGATION_*: NONE traces every packet; LOW and up trace the first
 *                        packet of each connection direction and packets with new TCP flags
 *                        (conntrack.h, ct_report). Drops and policy verdicts: always.
 */
#ifndef CAPILLARY_EVENTS_H
#define CAPILLARY_EVENTS_H

#include "common.h"

#ifndef EVENTS_RING_BYTES
#define EVENTS_RING_BYTES 4096
#endif
#ifndef EVENTS_AGGREGATION
#define EVENTS_AGGREGATION 3
#endif

/* Event types: Cilium's monitor message types. Shared with services/datapath/numbers.py. */
#define EVENT_DROP            1
#define EVENT_TRACE           4
#define EVENT_POLICY_VERDICT  5

/* Trace observation points (a trace event's subtype): Cilium's numbering. */
#define TRACE_TO_LXC      0   /* delivered into a pod (Hubble: TO_ENDPOINT) */
#define TRACE_TO_STACK    3   /* handed to the host stack */
#define TRACE_TO_OVERLAY  4   /* encapsulated for another node (Hubble: TO_OVERLAY) */
#define TRACE_FROM_LXC    5   /* sent by a pod (Hubble: FROM_ENDPOINT) */
#define TRACE_FROM_OVERLAY 9  /* decapsulated from another node (Hubble: FROM_OVERLAY) */
#define TRACE_FROM_NETWORK 10 /* from another node, natively routed (Hubble: FROM_NETWORK) */
#define TRACE_TO_NETWORK  11  /* sent to another node, natively routed (Hubble: TO_NETWORK) */

/* Why a packet was traced: its connection tracking state, Cilium's trace reasons. */
#define TRACE_REASON_POLICY          0   /* a new connection */
#define TRACE_REASON_CT_ESTABLISHED  1
#define TRACE_REASON_CT_REPLY        2
#define TRACE_REASON_UNKNOWN         5   /* not looked up (dropped before conntrack) */

/* events.aggregation, Cilium's monitor aggregation levels. */
#define AGGREGATION_NONE     0
#define AGGREGATION_LOW      2
#define AGGREGATION_MEDIUM   3
#define AGGREGATION_MAXIMUM  4

/* Bytes of each packet copied into its event, from the Ethernet header on. */
#define EVENT_CAPTURE_LEN 128

/* The one key of cap_events_stats. */
#define EVENT_STATS_KEY 0

struct flow_event {
	__u64 ktime;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u8  type;           /* EVENT_* */
	__u8  subtype;        /* drop: reason; trace: TRACE_TO_* / TRACE_FROM_*; verdict: 0 */
	__u16 endpoint_id;    /* the endpoint the event is about (0: none known) */
	__u32 ifindex;        /* the lxc device the program runs on */
	__u32 src_identity;   /* the packet's source and destination security identities */
	__u32 dst_identity;
	__u32 rule_id;        /* policy verdicts and policy drops: the deciding entry's rule */
	__u32 orig_len;       /* skb->len */
	__u16 cap_len;        /* bytes of the packet in data[] */
	__u8  direction;      /* METRIC_INGRESS / METRIC_EGRESS: into or out of endpoint_id */
	__u8  reason;         /* TRACE_REASON_* */
	__u8  verdict;        /* policy verdicts: VERDICT_* */
	__u8  match_type;     /* policy verdicts: POLICY_MATCH_* */
	__u16 pad;
	__u8  data[EVENT_CAPTURE_LEN];
};

/* Per-CPU counts of events the ring took and events lost because it was full. */
struct event_stats {
	__u64 emitted;
	__u64 lost;
};

struct cap_events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
/* BPF_RINGBUF_OUTPUT, pinned: bcc 0.26 has no pinned variant, but its section syntax
 * ("maps/<type>:<path>") pins any map, and the methods above are what it rewrites. */
__attribute__((section("maps/ringbuf:" PIN_ROOT "/events")))
struct cap_events_table_t cap_events = { .max_entries = EVENTS_RING_BYTES };

BPF_TABLE_PINNED("percpu_array", __u32, struct event_stats, cap_events_stats, 1,
		 PIN_ROOT "/events_stats");

/* Who and what an event is about; filled by the program, one per packet. */
struct event_meta {
	__u32 src_identity;
	__u32 dst_identity;
	__u16 endpoint_id;
	__u8  direction;      /* METRIC_INGRESS / METRIC_EGRESS */
	__u8  reason;         /* TRACE_REASON_* */
};

static __always_inline void events_account(int emitted)
{
	__u32 key = EVENT_STATS_KEY;
	struct event_stats *st = cap_events_stats.lookup(&key);

	if (!st)
		return;
	if (emitted)
		st->emitted += 1;
	else
		st->lost += 1;
}

/* Reserve an event in the ring and fill what every event has; NULL when the ring is full
 * (counted as lost). The caller sets its own fields, then submits. */
static __always_inline struct flow_event *event_start(struct __sk_buff *skb, __u8 type,
						      __u8 subtype, const struct event_meta *m)
{
	struct flow_event *e = cap_events.ringbuf_reserve(sizeof(struct flow_event));
	__u32 n = skb->len;

	if (!e) {
		events_account(0);
		return 0;
	}
	__builtin_memset(e, 0, offsetof(struct flow_event, data));
	e->ktime = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->endpoint_id = m->endpoint_id;
	e->ifindex = skb->ifindex;
	e->src_identity = m->src_identity;
	e->dst_identity = m->dst_identity;
	e->orig_len = skb->len;
	e->direction = m->direction;
	e->reason = m->reason;
	/* 1..EVENT_CAPTURE_LEN (a power of two) in a form the verifier can bound. */
	if (n > EVENT_CAPTURE_LEN)
		n = EVENT_CAPTURE_LEN;
	n = ((n - 1) & (EVENT_CAPTURE_LEN - 1)) + 1;
	if (bpf_skb_load_bytes(skb, 0, e->data, n) == 0)
		e->cap_len = n;
	return e;
}

static __always_inline void event_submit(struct flow_event *e)
{
	cap_events.ringbuf_submit(e, 0);
	events_account(1);
}

static __always_inline void emit_trace(struct __sk_buff *skb, const struct event_meta *m,
				       __u8 obs_point)
{
	struct flow_event *e = event_start(skb, EVENT_TRACE, obs_point, m);

	if (e)
		event_submit(e);
}

static __always_inline void emit_drop(struct __sk_buff *skb, const struct event_meta *m,
				      __u8 reason, __u32 rule_id)
{
	struct flow_event *e = event_start(skb, EVENT_DROP, reason, m);

	if (!e)
		return;
	e->rule_id = rule_id;
	event_submit(e);
}

static __always_inline void emit_policy_verdict(struct __sk_buff *skb, const struct event_meta *m,
						__u8 verdict, __u8 match_type, __u32 rule_id)
{
	struct flow_event *e = event_start(skb, EVENT_POLICY_VERDICT, 0, m);

	if (!e)
		return;
	e->verdict = verdict;
	e->match_type = match_type;
	e->rule_id = rule_id;
	event_submit(e);
}

#endif
