/* BPF host routing (Cilium's name; its legacy path is `--enable-host-legacy-routing`, here
 * datapath.hostLegacyRouting), sending side: a packet from a pod to a pod on another node
 * reached by native routing (an ipcache entry of source remote without a tunnel endpoint)
 * leaves through the node's underlay device straight from from_container. The kernel's FIB
 * names the device and next hop (the route routed keeps to that node's pod CIDR); the packet
 * is forwarded as a router would (TTL, MACs) and redirected to the device's egress, without
 * the host stack's forwarding pass (routing, netfilter). The receiving node's from_netdev
 * (lxc.c) delivers it into the pod. Without a neighbour entry for the next hop,
 * bpf_redirect_neigh resolves it. Whatever else the FIB answers (no route, forwarding off,
 * fragmentation needed) and a TTL about to expire go to the host stack, which answers
 * them as before (ICMP errors included). */
#ifndef CAPILLARY_HOST_ROUTING_H
#define CAPILLARY_HOST_ROUTING_H

#include <uapi/linux/if_packet.h>
#include "common.h"
#include "ipcache.h"
#include "l3.h"
#include "metrics.h"
#include "events.h"

#define HOST_ROUTE_PASS (-1)   /* not sent: the caller hands it to the host stack */

/* bpf_redirect_neigh as the kernel defines it (since 5.11: ifindex, params, their length,
 * flags); bcc 0.26 declares it with an older, three-argument signature. */
static long (*redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* Send the IPv4 packet to DADDR out of the underlay device when DADDR is a natively routed
 * pod on another node (its ipcache entry INFO, NULL: none, says so); HOST_ROUTE_PASS when
 * not. M describes it (the source endpoint, egress); TRACED: whether it is reported (a
 * to-network trace). */
static __always_inline int host_route(struct __sk_buff *skb, struct event_meta *m, struct ipcache_info *info,
				      __be32 daddr, int traced)
{
#if defined(HOST_STACK) || defined(HOST_LEGACY_ROUTING)
	return HOST_ROUTE_PASS;
#else
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct bpf_fib_lookup fib = {};
	int rc;

	if (!info || info->flags != IPCACHE_SOURCE_REMOTE || info->tunnel_endpoint)
		return HOST_ROUTE_PASS;
	if ((void *)(ip4 + 1) > data_end || ip4->ttl <= 1)
		return HOST_ROUTE_PASS;
	fib.family = FIB_AF_INET;
	fib.tos = ip4->tos;
	fib.l4_protocol = ip4->protocol;
	/* A GSO packet's length is the whole burst's: with none given, the kernel checks the
	 * packet against the device's MTU itself, segments counted as segments. */
	fib.tot_len = skb->gso_size ? 0 : bpf_ntohs(ip4->tot_len);
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return HOST_ROUTE_PASS;
	/* With no neighbour the MACs are rewritten by bpf_redirect_neigh: only TTL matters. */
	if (ipv4_forward(skb, fib.smac, fib.dmac) < 0)
		return HOST_ROUTE_PASS;
	count(skb, METRIC_EGRESS, REASON_FORWARDED);
	if (traced)
		emit_trace(skb, m, TRACE_TO_NETWORK);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* fib.ipv4_dst is now the next hop (the remote node's underlay address). */
		struct bpf_redir_neigh nh = { .nh_family = FIB_AF_INET, .ipv4_nh = fib.ipv4_dst };

		return redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect(fib.ifindex, 0);
#endif
}

#endif
