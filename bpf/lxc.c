/* Programs on each pod's host-side veth (lxc...). Compiled once per node by endpointd and
 * attached to every endpoint; everything per-endpoint comes from maps.
 *
 * from_container: tc ingress of the lxc device, i.e. every packet the pod sends.
 */
#include "lib/common.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/metrics.h"
#include "lib/arp.h"
#include "lib/l3.h"

static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct endpoint_info *src, *dst;
	__u8 ttl;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5) {
		count(skb, METRIC_EGRESS, DROP_INVALID);
		return TC_ACT_SHOT;
	}

	/* Anti-spoofing: the source address must be the one this endpoint was given. */
	src = lookup_endpoint(ip4->saddr);
	if (!src || src->ifindex != skb->ifindex) {
		count(skb, METRIC_EGRESS, DROP_INVALID_SIP);
		return TC_ACT_SHOT;
	}

	/* Policy (egress here, the destination's ingress before the redirect) goes here. */

	dst = lookup_endpoint(ip4->daddr);
	ttl = ip4->ttl;
#ifndef HOST_STACK
	if (dst && ttl > 1) {
		__u8 host_mac[ETH_ALEN], pod_mac[ETH_ALEN];
		__u32 ifindex = dst->ifindex;

		__builtin_memcpy(host_mac, dst->host_mac, ETH_ALEN);
		__builtin_memcpy(pod_mac, dst->pod_mac, ETH_ALEN);
		if (ipv4_dec_ttl(skb, ttl) < 0 || rewrite_macs(skb, host_mac, pod_mac) < 0) {
			count(skb, METRIC_EGRESS, DROP_INVALID);
			return TC_ACT_SHOT;
		}
		count(skb, METRIC_EGRESS, REASON_REDIRECT_PEER);
		return bpf_redirect_peer(ifindex, 0);
	}
#endif
	/* Host, router, world, or host-stack mode: the kernel routes it (/32 routes to lxc). */
	count(skb, METRIC_EGRESS, REASON_FORWARDED);
	return TC_ACT_OK;
}

int from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(skb);

	if (eth->h_proto == bpf_htons(ETH_P_ARP) && arp_wants_router(skb)) {
		struct arp_eth_ipv4 *body = data + ETH_HLEN + sizeof(struct arphdr);
		struct endpoint_info *ep;

		if ((void *)(body + 1) > data_end)
			return TC_ACT_OK;
		ep = lookup_endpoint(body->sip);
		if (!ep || ep->ifindex != skb->ifindex)
			return TC_ACT_OK;
		count(skb, METRIC_EGRESS, REASON_ARP_REPLY);
		return arp_respond(skb, ep->host_mac);
	}
	/* IPv6 and other L3 protocols are not ours: the host stack decides. */
	return TC_ACT_OK;
}
