/* Per-CPU packet and byte counters by (direction, reason). Owner: endpointd, read by flowd
 * and `capillary status`. Index = direction << 8 | reason. */
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
