/* Programs on each pod's host-side veth (lxc...). Compiled once per node by endpointd and
 * attached to every endpoint; everything per-endpoint comes from maps.
 *
 * from_container: tc ingress of the lxc device, i.e. every packet the pod sends. Checks the
 *   source address, then for a new connection the source's egress policy and, when the
 *   destination is a local pod, that pod's ingress policy; then delivers it.
 * to_container: tc egress of the lxc device, i.e. packets the host stack sends into the
 *   pod (from the host, the world, or another pod in host-stack mode). Checks the pod's
 *   ingress policy unless from_container already did.
 * Both report to flowd (lib/events.h): a trace at each observation point a packet passes
 * (from-endpoint, to-endpoint, to-stack; aggregated per connection unless
 * events.aggregation is none), a policy-verdict event for every policy decision, and a
 * drop event for every drop.
 */
#include "lib/common.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/metrics.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/arp.h"
#include "lib/l3.h"
#include "lib/events.h"

/* skb->mark set by from_container when the destination's ingress policy was already
 * applied (host-stack mode); to_container then skips it and clears the mark. The mark is
 * written whole: tc programs may not store part of it. */
#define MARK_POLICY_DONE 0x0ca90000

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8
#define TCP_FLAGS_OFF  13

/* event_meta.reason is the packet's conntrack state: the numbers are the same. */
_Static_assert(TRACE_REASON_POLICY == CT_NEW && TRACE_REASON_CT_ESTABLISHED == CT_ESTABLISHED &&
	       TRACE_REASON_CT_REPLY == CT_REPLY, "trace reasons are conntrack states");

/* Trace this packet? Every packet without aggregation; else only what is news for its
 * connection in SLOT (ct_report: a new direction or new TCP flags). */
static __always_inline int trace_wanted(struct ct_entry *ct, __u32 slot, struct l4_tuple *l4)
{
#if EVENTS_AGGREGATION == AGGREGATION_NONE
	return 1;
#else
	return ct_report(ct, slot, l4);
#endif
}

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
			__u8 *flags = (__u8 *)l4h + TCP_FLAGS_OFF;
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

/* One endpoint's policy decision for a new connection. M says whose (endpoint_id) and which
 * way (direction); the peer is the other side's identity. Reports a policy-verdict event
 * always, and a drop event (and counter) when it denies. Returns 0 to go on, or TC_ACT_SHOT. */
static __always_inline int enforce(struct __sk_buff *skb, const struct event_meta *m, __u8 proto,
				   struct l4_tuple *l4, struct ct_new *n)
{
	__u8 egress = m->direction == METRIC_EGRESS ? POLICY_EGRESS : POLICY_INGRESS;
	__u32 peer = egress ? m->dst_identity : m->src_identity;
	struct policy_result res = policy_check(m->endpoint_id, egress, peer, proto, l4->policy_port,
						skb->len);

	emit_policy_verdict(skb, m, res.verdict, res.match_type, res.rule_id);
	if (res.verdict == VERDICT_DROPPED) {
		emit_drop(skb, m, res.reason, res.rule_id);
		count(skb, m->direction, res.reason);
		return TC_ACT_SHOT;
	}
	if (res.verdict == VERDICT_AUDIT)
		n->flags = CT_AUDIT;
	if (egress)
		n->rule_id = res.rule_id;
	return 0;
}

/* Drop a packet the pod sent before anything is known about it, reporting REASON. */
static __always_inline int drop_early(struct __sk_buff *skb, __u8 dir, __u8 reason)
{
	struct event_meta m = { .direction = dir, .reason = TRACE_REASON_UNKNOWN };

	emit_drop(skb, &m, reason, 0);
	count(skb, dir, reason);
	return TC_ACT_SHOT;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct endpoint_info *src, *dst;
	struct event_meta m = { .direction = METRIC_EGRESS };
	struct l4_tuple l4 = {};
	struct ct_entry *ct;
	enum ct_state state;
	__be32 saddr, daddr;
	__u8 ttl, proto;
	int traced;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0)
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID);
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	ttl = ip4->ttl;
	proto = ip4->protocol;

	/* Anti-spoofing: the source address must be the one this endpoint was given. */
	src = lookup_endpoint(saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID_SIP);
	count_endpoint(skb, src->endpoint_id, 0);
	dst = lookup_endpoint(daddr);

	state = ct_lookup(saddr, daddr, proto, &l4, skb->len, &ct);
	m.endpoint_id = src->endpoint_id;
	m.src_identity = src->identity;
	m.reason = state;
	traced = state == CT_NEW ||
		 trace_wanted(ct, CT_SLOT_FROM_CONTAINER | (state == CT_REPLY), &l4);
	if (traced) {
		m.dst_identity = dst ? dst->identity : lookup_identity(daddr);
		emit_trace(skb, &m, TRACE_FROM_LXC);
	}

	if (state == CT_NEW) {
		struct ct_new n = { .slot = CT_SLOT_FROM_CONTAINER };
		struct event_meta in = m;

		if (enforce(skb, &m, proto, &l4, &n))
			return TC_ACT_SHOT;
		in.endpoint_id = dst ? dst->endpoint_id : 0;
		in.direction = METRIC_INGRESS;
		if (dst && enforce(skb, &in, proto, &l4, &n))
			return TC_ACT_SHOT;
		if (l4.valid)
			ct_create(saddr, daddr, proto, &l4, skb->len, &n);
	}

#ifndef HOST_STACK
	if (dst && ttl > 1) {
		__u8 host_mac[ETH_ALEN], pod_mac[ETH_ALEN];
		__u32 ifindex = dst->ifindex;

		__builtin_memcpy(host_mac, dst->host_mac, ETH_ALEN);
		__builtin_memcpy(pod_mac, dst->pod_mac, ETH_ALEN);
		if (ipv4_dec_ttl(skb, ttl) < 0 || rewrite_macs(skb, host_mac, pod_mac) < 0)
			return drop_early(skb, METRIC_EGRESS, DROP_INVALID);
		count(skb, METRIC_EGRESS, REASON_REDIRECT_PEER);
		count_endpoint(skb, dst->endpoint_id, 1);
		if (traced) {
			m.endpoint_id = dst->endpoint_id;
			m.direction = METRIC_INGRESS;
			emit_trace(skb, &m, TRACE_TO_LXC);
		}
		return bpf_redirect_peer(ifindex, 0);
	}
#endif
	if (dst)
		skb->mark = MARK_POLICY_DONE;
	/* Host, router, world, or host-stack mode: the kernel routes it (/32 routes to lxc). */
	count(skb, METRIC_EGRESS, REASON_FORWARDED);
	if (traced)
		emit_trace(skb, &m, TRACE_TO_STACK);
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

/* A pod-to-pod packet entering its pod in host-stack mode: from_container already judged
 * it, so here it is only counted for its endpoint and traced (conntrack is only peeked at). */
static __always_inline void trace_policy_done(struct __sk_buff *skb, struct iphdr *ip4)
{
	struct event_meta m = { .direction = METRIC_INGRESS };
	struct endpoint_info *src, *dst;
	struct l4_tuple l4 = {};
	struct ct_entry *ct;
	__be32 saddr = ip4->saddr, daddr = ip4->daddr;
	__u8 proto = ip4->protocol;

	if (parse_l4(skb, ip4, &l4) < 0)
		return;
	dst = lookup_endpoint(daddr);
	if (!dst)
		return;
	count_endpoint(skb, dst->endpoint_id, 1);
	m.reason = ct_peek(saddr, daddr, proto, &l4, &ct);
	if (!trace_wanted(ct, CT_SLOT_TO_CONTAINER | (m.reason == CT_REPLY), &l4))
		return;
	src = lookup_endpoint(saddr);
	m.src_identity = src ? src->identity : lookup_identity(saddr);
	m.dst_identity = dst->identity;
	m.endpoint_id = dst->endpoint_id;
	emit_trace(skb, &m, TRACE_TO_LXC);
}

int to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct event_meta m = { .direction = METRIC_INGRESS };
	struct endpoint_info *dst;
	struct l4_tuple l4 = {};
	struct ct_entry *ct;
	__be32 saddr, daddr;
	__u8 proto;
	int traced;

	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (skb->mark == MARK_POLICY_DONE) {
		skb->mark = 0;
		count(skb, METRIC_INGRESS, REASON_FORWARDED);
		trace_policy_done(skb, ip4);
		return TC_ACT_OK;
	}
	if (ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0)
		return drop_early(skb, METRIC_INGRESS, DROP_INVALID);
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	proto = ip4->protocol;
	dst = lookup_endpoint(daddr);
	if (!dst || dst->ifindex != skb->ifindex)
		return TC_ACT_OK;

	m.reason = ct_lookup(saddr, daddr, proto, &l4, skb->len, &ct);
	m.endpoint_id = dst->endpoint_id;
	m.dst_identity = dst->identity;
	traced = m.reason == CT_NEW ||
		 trace_wanted(ct, CT_SLOT_TO_CONTAINER | (m.reason == CT_REPLY), &l4);
	if (traced)
		m.src_identity = lookup_identity(saddr);
	if (m.reason == CT_NEW) {
		struct ct_new n = { .slot = CT_SLOT_TO_CONTAINER };

		if (enforce(skb, &m, proto, &l4, &n))
			return TC_ACT_SHOT;
		if (l4.valid)
			ct_create(saddr, daddr, proto, &l4, skb->len, &n);
	}
	count(skb, METRIC_INGRESS, REASON_FORWARDED);
	count_endpoint(skb, dst->endpoint_id, 1);
	if (traced)
		emit_trace(skb, &m, TRACE_TO_LXC);
	return TC_ACT_OK;
}
