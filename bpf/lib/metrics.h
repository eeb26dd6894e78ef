/* Per-CPU packet and byte counters by (direction, reason), and per endpoint. Owner:
 * endpointd, read by flowd and `capillary status`. cap_metrics index = direction << 8 | reason.
 * cap_ep_metrics holds the endpoints' counters EP_METRICS_BLOCK to an element: endpoint id N
 * is slot N % EP_METRICS_BLOCK of element N / EP_METRICS_BLOCK. endpointd gives each endpoint
 * the lowest free id, at most ENDPOINTS_MAP_SIZE (services/endpointd/service.py). */
#ifndef CAPILLARY_METRICS_H
#define CAPILLARY_METRICS_H

#include "common.h"

#define METRICS_MAP_SIZE (3 << 8)

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

BPF_TABLE_PINNED("percpu_array", __u32, struct metrics_value, cap_metrics,
		 METRICS_MAP_SIZE, PIN_ROOT "/metrics");

/* Packets and bytes sent by (tx) and delivered to (rx) one endpoint. */
struct ep_metrics {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

#ifndef ENDPOINTS_MAP_SIZE
#define ENDPOINTS_MAP_SIZE 4096
#endif

/* Blocks, not an element per endpoint: a per-CPU array keeps a table of pointers to each
 * element's per-CPU values, and at one element an endpoint that table outgrows kmalloc
 * (over 4,000 entries) and lands in vmalloc's 4 KB pages, where a packet's lookup costs a
 * page walk whenever the TLB has lost it (a sixth of a cold run: docs/benchmarks.md 1d). */
#define EP_METRICS_BLOCK 256

struct ep_metrics_block {
	struct ep_metrics ep[EP_METRICS_BLOCK];
};

BPF_TABLE_PINNED("percpu_array", __u32, struct ep_metrics_block, cap_ep_metrics,
		 ENDPOINTS_MAP_SIZE / EP_METRICS_BLOCK + 1, PIN_ROOT "/ep_metrics");

/* What each id's counters, summed over the CPUs, read when its last endpoint went: an
 * endpoint's counts are its counters less this. Userspace zeroes an id this way because it
 * cannot write one slot of a block without rewriting its neighbours', whose packets the
 * datapath may be counting at that moment. Not read by programs. */
BPF_TABLE_PINNED("array", __u32, struct ep_metrics, cap_ep_metrics_base,
		 ENDPOINTS_MAP_SIZE + 1, PIN_ROOT "/ep_metrics_base");

static __always_inline void count_endpoint(struct __sk_buff *skb, __u32 endpoint_id, int rx)
{
	__u32 block = endpoint_id / EP_METRICS_BLOCK;
	struct ep_metrics_block *b = cap_ep_metrics.lookup(&block);
	struct ep_metrics *v;

	if (!b)
		return;
	v = &b->ep[endpoint_id & (EP_METRICS_BLOCK - 1)];
	if (rx) {
		v->rx_packets += 1;
		v->rx_bytes += skb->len;
	} else {
		v->tx_packets += 1;
		v->tx_bytes += skb->len;
	}
}

static __always_inline void count(struct __sk_buff *skb, __u32 dir, __u32 reason)
{
	__u32 idx = (dir << 8) | (reason & 0xff);
	struct metrics_value *v = cap_metrics.lookup(&idx);
	if (v) {
		v->packets += 1;
		v->bytes += skb->len;
	}
}

#endif
