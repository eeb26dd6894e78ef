/* Per-CPU packet and byte counters by (direction, reason), and per endpoint. Owner:
 * endpointd, read by flowd and `capillary status`. cap_metrics index = direction << 8 | reason.
 * cap_ep_metrics index = endpoint id: endpointd gives each endpoint the lowest free id, at
 * most ENDPOINTS_MAP_SIZE (services/endpointd/service.py), and zeroes an endpoint's counters
 * when it goes, so a reused id starts from zero. */
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

/* An array, not a hash: the verifier inlines a lookup as an index, where a hash map would
 * hash the id and walk a bucket, for the sender and again for the receiver of each packet. */
BPF_TABLE_PINNED("percpu_array", __u32, struct ep_metrics, cap_ep_metrics,
		 ENDPOINTS_MAP_SIZE + 1, PIN_ROOT "/ep_metrics");

static __always_inline void count_endpoint(struct __sk_buff *skb, __u32 endpoint_id, int rx)
{
	struct ep_metrics *v = cap_ep_metrics.lookup(&endpoint_id);

	if (!v)
		return;
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
