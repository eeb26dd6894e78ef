/* Tunnel mode, sending side: a packet from a pod to a pod whose ipcache entry names a tunnel
 * endpoint (another node's underlay address) leaves encapsulated. The tunnel key carries the
 * source's security identity as the VXLAN VNI, as Cilium does, so the receiving node
 * (from_overlay in lxc.c) enforces its pod's ingress policy without asking anyone who sent
 * it. Pod identities are below 2^24 (services/policyd/identity.py): a VNI holds them. */
#ifndef CAPILLARY_OVERLAY_H
#define CAPILLARY_OVERLAY_H

#include "common.h"
#include "ipcache.h"
#include "tunnel.h"
#include "metrics.h"
#include "events.h"

#define OVERLAY_TTL 64
#define OVERLAY_PASS (-1)      /* not for the overlay: the caller goes on */

/* Encapsulate and redirect to the VXLAN device when DADDR is behind a tunnel endpoint;
 * OVERLAY_PASS when it is not. M describes the packet (the source endpoint, egress);
 * TRACED: whether this packet is reported (a to-overlay trace). */
static __always_inline int overlay_send(struct __sk_buff *skb, struct event_meta *m, __be32 daddr,
					int traced)
{
	struct ipcache_info *info = lookup_ipcache(daddr);
	struct bpf_tunnel_key key = {};
	struct tunnel_info *dev;
	__u32 zero = TUNNEL_KEY;
	__u8 reason = DROP_NO_TUNNEL_ENDPOINT;

	if (!info || !info->tunnel_endpoint)
		return OVERLAY_PASS;
	dev = cap_tunnel.lookup(&zero);
	if (dev && dev->ifindex) {
		key.remote_ipv4 = bpf_ntohl(info->tunnel_endpoint);
		key.tunnel_id = m->src_identity;
		key.tunnel_ttl = OVERLAY_TTL;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) == 0) {
			count(skb, METRIC_EGRESS, REASON_FORWARDED);
			if (traced)
				emit_trace(skb, m, TRACE_TO_OVERLAY);
			return bpf_redirect(dev->ifindex, 0);
		}
		reason = DROP_WRITE_ERROR;
	}
	m->reason = TRACE_REASON_UNKNOWN;
	emit_drop(skb, m, reason, 0);
	count(skb, METRIC_EGRESS, reason);
	return TC_ACT_SHOT;
}

#endif
