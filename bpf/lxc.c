/* Programs on each pod's host-side veth (lxc...). Compiled once per node by endpointd and
 * attached to every endpoint; everything per-endpoint comes from maps.
 *
 * from_container: tc ingress of the lxc device, i.e. every packet the pod sends. Checks the
 *   source address, then for a new connection the source's egress policy and, when the
 *   destination is a local pod, that pod's ingress policy; then delivers it.
 * to_container: tc egress of the lxc device, i.e. packets the host stack sends into the
 *   pod (from the host, the world, or another pod in host-stack mode). Checks the pod's
 *   ingress policy unless from_container already did.
 */
#include "lib/common.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/metrics.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/arp.h"
#include "lib/l3.h"

/* skb->mark set by from_container when the destination's ingress policy was already
 * applied (host-stack mode); to_container then skips it and clears the mark. The mark is
 * written whole: tc programs may not store part of it. */
#define MARK_POLICY_DONE 0x0ca90000

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8

static __always_inline int parse_l4(struct __sk_buff *skb, struct iphdr *ip4, struct l4_tuple *l4)
{
	void *data_end = (void *)(long)skb->data_end;
	void *l4h = (void *)ip4 + ip4->ihl * 4;

	l4->valid = 0;
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;            /* a later fragment: no L4 header, policy on L3 only */
	if (ip4->protocol == IPPROTO_TCP || ip4->protocol == IPPROTO_UDP || ip4->protocol == IPPROTO_SCTP) {
		__be16 *ports = l4h;
		if ((void *)(ports + 2) > data_end)
			return -1;
		l4->sport = ports[0];
		l4->dport = ports[1];
		l4->policy_port = bpf_ntohs(ports[1]);
		l4->valid = 1;
		if (ip4->protocol == IPPROTO_TCP) {
			__u8 *flags = l4h + 13;
			if ((void *)(flags + 1) > data_end)
				return -1;
			l4->tcp_flags = *flags;
		}
	} else if (ip4->protocol == IPPROTO_ICMP) {
		__u8 *icmp = l4h;
		if ((void *)(icmp + 8) > data_end)
			return -1;
		l4->policy_port = icmp[0];               /* the ICMP type */
		if (icmp[0] == ICMP_ECHO || icmp[0] == ICMP_ECHOREPLY) {
			__be16 id = *(__be16 *)(icmp + 4);
			l4->sport = id;
			l4->dport = id;
			l4->valid = 1;
		}
	}
	return 0;
}

/* One side's policy decision; counts drops. Returns 0 to go on, or TC_ACT_SHOT. */
static __always_inline int enforce(struct __sk_buff *skb, __u16 ep, __u8 egress, __u32 peer,
				   __u8 proto, struct l4_tuple *l4, __u32 *audit, __u32 *rule_id)
{
	struct policy_result res = policy_check(ep, egress, peer, proto, l4->policy_port, skb->len);
	__u32 dir = egress ? METRIC_EGRESS : METRIC_INGRESS;

	if (res.verdict == VERDICT_DROPPED) {
		count(skb, dir, res.reason);
		return TC_ACT_SHOT;
	}
	if (res.verdict == VERDICT_AUDIT)
		*audit = CT_AUDIT;
	if (egress)
		*rule_id = res.rule_id;
	return 0;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct endpoint_info *src, *dst;
	struct l4_tuple l4 = {};
	__be32 saddr, daddr;
	__u8 ttl, proto;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0) {
		count(skb, METRIC_EGRESS, DROP_INVALID);
		return TC_ACT_SHOT;
	}
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	ttl = ip4->ttl;
	proto = ip4->protocol;

	/* Anti-spoofing: the source address must be the one this endpoint was given. */
	src = lookup_endpoint(saddr);
	if (!src || src->ifindex != skb->ifindex) {
		count(skb, METRIC_EGRESS, DROP_INVALID_SIP);
		return TC_ACT_SHOT;
	}
	dst = lookup_endpoint(daddr);

	if (ct_lookup(saddr, daddr, proto, &l4, skb->len) == CT_NEW) {
		__u32 audit = 0, rule_id = 0;
		__u32 peer = dst ? dst->identity : lookup_identity(daddr);

		if (enforce(skb, src->endpoint_id, POLICY_EGRESS, peer, proto, &l4, &audit, &rule_id))
			return TC_ACT_SHOT;
		if (dst && enforce(skb, dst->endpoint_id, POLICY_INGRESS, src->identity, proto, &l4,
				   &audit, &rule_id))
			return TC_ACT_SHOT;
		if (l4.valid)
			ct_create(saddr, daddr, proto, &l4, skb->len, audit, rule_id);
	}

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
	if (dst)
		skb->mark = MARK_POLICY_DONE;
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

int to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct endpoint_info *dst;
	struct l4_tuple l4 = {};
	__be32 saddr, daddr;
	__u8 proto;

	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (skb->mark == MARK_POLICY_DONE) {
		skb->mark = 0;
		count(skb, METRIC_INGRESS, REASON_FORWARDED);
		return TC_ACT_OK;
	}
	if (ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0) {
		count(skb, METRIC_INGRESS, DROP_INVALID);
		return TC_ACT_SHOT;
	}
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	proto = ip4->protocol;
	dst = lookup_endpoint(daddr);
	if (!dst || dst->ifindex != skb->ifindex)
		return TC_ACT_OK;

	if (ct_lookup(saddr, daddr, proto, &l4, skb->len) == CT_NEW) {
		__u32 audit = 0, rule_id = 0;
		__u32 peer = lookup_identity(saddr);

		if (enforce(skb, dst->endpoint_id, POLICY_INGRESS, peer, proto, &l4, &audit, &rule_id))
			return TC_ACT_SHOT;
		if (l4.valid)
			ct_create(saddr, daddr, proto, &l4, skb->len, audit, rule_id);
	}
	count(skb, METRIC_INGRESS, REASON_FORWARDED);
	return TC_ACT_OK;
}
