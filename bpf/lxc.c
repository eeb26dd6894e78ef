/* Programs on each pod's host-side veth (lxc...). Compiled once per node by endpointd and
 * attached to every endpoint; everything per-endpoint comes from maps.
 *
 * from_container: tc ingress of the lxc device, i.e. every packet the pod sends. Checks the
 *   source address, then for a new connection the source's egress policy and, when the
 *   destination is a local pod, that pod's ingress policy; then delivers it.
 * to_container: tc egress of the lxc device, i.e. packets the host stack sends into the
 *   pod (from the host, the world, or another pod in host-stack mode). Checks the pod's
 *   ingress policy unless from_container already did.
 * from_netdev: tc ingress of the node's underlay device, in either routing mode: packets
 *   another node's pods sent here, for a local pod. In tunnel mode it takes the VXLAN
 *   headers off itself (lib/overlay.h) and the source identity from the VNI; natively routed
 *   ones take it from the ipcache. Checks the destination pod's ingress policy as
 *   to_container does and delivers the packet straight into the pod. (The sending sides are
 *   lib/overlay.h and lib/host_routing.h.)
 * from_overlay: tc ingress of the node's VXLAN device (tunnel mode): the same for what
 *   from_netdev leaves to the kernel's VXLAN receive (with datapath.hostLegacyRouting, or a
 *   packet it does not take: another node's that is not IPv4 for a local pod).
 * An established connection's packets take a short way: its conntrack entry keeps, for each
 * direction, a copy of what they need from the endpoint map, true while the map's generation
 * is the one it was copied at (lib/conntrack.h, struct ct_way). A packet whose copy holds and
 * that is not traced is checked against it (its source device: anti-spoofing), counted and
 * delivered with no endpoint lookup; every other packet goes the whole way, which makes the
 * copy.
 * Only IPv4 and ARP are handled, as Cilium with IPv6 disabled: every other ethertype is
 * dropped both ways (DROP_UNKNOWN_L3). A packet to an address of the pod CIDR that is no
 * known endpoint is dropped (DROP_UNKNOWN_TARGET): a pod being deleted, or an endpoint
 * entry removed by hand, gets nothing, with or without policy.
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
#include "lib/overlay.h"
#include "lib/host_routing.h"

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

/* A new connection into a local pod (from the host stack or another node): the pod's
 * ingress policy, then its conntrack entry. Returns 0 to go on, or TC_ACT_SHOT. */
static __always_inline int admit_ingress(struct __sk_buff *skb, const struct event_meta *m, __be32 saddr,
					 __be32 daddr, __u8 proto, struct l4_tuple *l4)
{
	struct ct_new n = { .slot = CT_SLOT_TO_CONTAINER };

	if (enforce(skb, m, proto, l4, &n))
		return TC_ACT_SHOT;
	if (l4->valid)
		ct_create(saddr, daddr, proto, l4, skb->len, &n);
	return 0;
}

/* Drop a packet before conntrack saw it, reporting REASON about what M knows. */
static __always_inline int drop(struct __sk_buff *skb, struct event_meta *m, __u8 reason)
{
	m->reason = TRACE_REASON_UNKNOWN;
	emit_drop(skb, m, reason, 0);
	count(skb, m->direction, reason);
	return TC_ACT_SHOT;
}

/* Drop a packet before anything is known about it, reporting REASON. */
static __always_inline int drop_early(struct __sk_buff *skb, __u8 dir, __u8 reason)
{
	struct event_meta m = { .direction = dir };

	return drop(skb, &m, reason);
}

/* The way of live entry CT that packet L4 in STATE travels, when it holds a copy of the
 * endpoints made at generation GEN of the endpoint map (still true, then) saying the packet
 * comes from the endpoint on FROM_IFINDEX (0: from outside the node's pods) and goes to a
 * local pod, and the packet has no trace due in SLOT (events.aggregation none: always
 * one). NULL otherwise. Changes nothing. */
static __always_inline struct ct_way *known_way(struct ct_entry *ct, enum ct_state state,
						struct l4_tuple *l4, __u64 gen, __u32 from_ifindex,
						__u32 slot)
{
	struct ct_way *w = ct_way(ct, state);

	if (w->gen != gen || w->from_ifindex != from_ifindex || !w->to_ifindex)
		return 0;
#if EVENTS_AGGREGATION == AGGREGATION_NONE
	return 0;
#else
	if (ct_report_due(ct, slot | (state == CT_REPLY), l4))
		return 0;
	asm volatile("" ::: "memory");   /* the way's fields after its generation */
	return w;
#endif
}

#ifndef HOST_STACK
#define FAST_MISS (-1)

/* An established packet from a local pod to a local pod whose way knows both endpoints
 * (known_way: the source is the endpoint on this device, so anti-spoofing holds) and that
 * traces nothing: its counts and the redirect, with no endpoint lookup. Any other packet
 * goes the whole way: FAST_MISS, nothing changed. */
static __always_inline int established_fast(struct __sk_buff *skb, struct ct_entry *ct,
					    enum ct_state state, struct l4_tuple *l4, __u64 gen,
					    __u64 now, __u8 ttl)
{
	struct ct_way *w = known_way(ct, state, l4, gen, skb->ifindex, CT_SLOT_FROM_CONTAINER);
	__u32 ifindex;

	if (!w || ttl <= 1)
		return FAST_MISS;
	ifindex = w->to_ifindex;
	ct_account(ct, state, l4, skb->len, now);
	count_endpoint(skb, w->from_endpoint, 0);
	if (ipv4_forward(skb, w->host_mac, w->pod_mac) < 0)
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID);
	count(skb, METRIC_EGRESS, REASON_REDIRECT_PEER);
	count_endpoint(skb, w->to_endpoint, 1);
	return bpf_redirect_peer(ifindex, 0);
}
#endif

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
	__u64 gen, now;
	__u8 ttl, proto;
	int traced;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0)
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID);
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	ttl = ip4->ttl;
	proto = ip4->protocol;
	gen = endpoints_gen();
	now = ct_clock();
	/* Nothing is written before anti-spoofing passed: here by the way's copy of it. */
	state = ct_open(saddr, daddr, proto, &l4, now, &ct);
#ifndef HOST_STACK
	if (ct) {
		int fast = established_fast(skb, ct, state, &l4, gen, now, ttl);

		if (fast != FAST_MISS)
			return fast;
	}
#endif

	/* Anti-spoofing: the source address must be the one this endpoint was given. */
	src = lookup_endpoint(saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID_SIP);
	count_endpoint(skb, src->endpoint_id, 0);
	m.endpoint_id = src->endpoint_id;
	m.src_identity = src->identity;
	dst = lookup_endpoint(daddr);
	if (!dst && IN_POD_CIDR(daddr) && daddr != ROUTER_IP)
		return drop(skb, &m, DROP_UNKNOWN_TARGET);

	if (ct)
		ct_account(ct, state, &l4, skb->len, now);
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

	if (!dst) {
		/* One ipcache lookup for both ways out to another node. */
		struct ipcache_info *info = lookup_ipcache(daddr);
		int sent = overlay_send(skb, &m, info, traced);

		if (sent != OVERLAY_PASS)
			return sent;
		sent = host_route(skb, &m, info, daddr, traced);
		if (sent != HOST_ROUTE_PASS)
			return sent;
	}
#ifndef HOST_STACK
	if (dst && ttl > 1) {
		__u32 ifindex = dst->ifindex;

		if (ct)
			ct_remember(ct_way(ct, state), gen, src->ifindex, src->endpoint_id, dst);
		if (ipv4_forward(skb, dst->host_mac, dst->pod_mac) < 0)
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
		return drop_early(skb, METRIC_EGRESS, DROP_INVALID);

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
	/* Other ARP (the pod answering the host's requests) goes to the host stack. */
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	return drop_early(skb, METRIC_EGRESS, DROP_UNKNOWN_L3);
}

/* A packet from a local pod through the host stack (host-stack mode, or host NAT), entering
 * another pod. from_container ran on the source's lxc device for it (the kernel sets
 * skb->ingress_ifindex on receive; nothing on the host can make a packet enter through a
 * pod's device but that pod). Whether from_container also judged the destination's ingress
 * is read from conntrack, not from anything the host can set (such as skb->mark): a live
 * entry for exactly this tuple exists only if the connection's first packet passed both
 * policies (from_container checks the destination's ingress whenever the destination is a
 * local endpoint, and drops what is addressed to an unknown one). Returns 1 when so: the
 * packet is then only counted for its endpoint and traced. With no live entry (an address
 * the host translated, a protocol without conntrack) the caller applies policy itself. */
static __always_inline int judged_by_source(struct __sk_buff *skb, struct event_meta *m,
					    struct iphdr *ip4, struct l4_tuple *l4)
{
	struct ct_entry *ct;

	if (!l4->valid)
		return 0;
	m->reason = ct_peek(ip4->saddr, ip4->daddr, ip4->protocol, l4, &ct);
	if (!ct)
		return 0;
	count(skb, METRIC_INGRESS, REASON_FORWARDED);
	count_endpoint(skb, m->endpoint_id, 1);
	if (trace_wanted(ct, CT_SLOT_TO_CONTAINER | (m->reason == CT_REPLY), l4))
		emit_trace(skb, m, TRACE_TO_LXC);
	return 1;
}

/* Whether a packet entering the pod comes from a local pod: 1 (M's source identity set), or
 * 0 for any source outside the pod CIDR and for the router address (the host's; the kernel
 * drops a packet from outside that claims a local address). An address of the pod CIDR is
 * only believed from that pod's own device: from anywhere else (a host on the L2 segment
 * posing as a pod, a stale address) it is -1. */
static __always_inline int local_source(struct __sk_buff *skb, __be32 saddr, struct event_meta *m)
{
	struct endpoint_info *src;

	if (!IN_POD_CIDR(saddr) || saddr == ROUTER_IP)
		return 0;
	src = lookup_endpoint(saddr);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return -1;
	m->src_identity = src->identity;
	return 1;
}

static __always_inline int to_container_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct event_meta m = { .direction = METRIC_INGRESS };
	struct endpoint_info *dst;
	struct l4_tuple l4 = {};
	struct ct_entry *ct = 0;
	__be32 saddr, daddr;
	__u64 gen, now;
	__u8 proto;
	int local, traced;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0)
		return drop_early(skb, METRIC_INGRESS, DROP_INVALID);
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	proto = ip4->protocol;
	gen = endpoints_gen();
	now = ct_clock();
	/* From outside the node's pods (local_source 0), established, and its way knows the
	 * endpoint on this device: counted, with no endpoint lookup. */
	if (!IN_POD_CIDR(saddr) || saddr == ROUTER_IP) {
		struct ct_way *w;

		m.reason = ct_open(saddr, daddr, proto, &l4, now, &ct);
		w = ct ? known_way(ct, m.reason, &l4, gen, 0, CT_SLOT_TO_CONTAINER) : 0;
		if (w && w->to_ifindex == skb->ifindex) {
			ct_account(ct, m.reason, &l4, skb->len, now);
			count(skb, METRIC_INGRESS, REASON_FORWARDED);
			count_endpoint(skb, w->to_endpoint, 1);
			return TC_ACT_OK;
		}
	}
	/* Only the endpoint this device belongs to receives through it. */
	dst = lookup_endpoint(daddr);
	if (!dst || dst->ifindex != skb->ifindex)
		return drop_early(skb, METRIC_INGRESS, DROP_UNKNOWN_TARGET);
	m.endpoint_id = dst->endpoint_id;
	m.dst_identity = dst->identity;
	local = local_source(skb, saddr, &m);
	if (local < 0)
		return drop(skb, &m, DROP_INVALID_SIP);
	if (local && judged_by_source(skb, &m, ip4, &l4))
		return TC_ACT_OK;

	if (local)
		m.reason = ct_open(saddr, daddr, proto, &l4, now, &ct);
	if (ct) {
		ct_account(ct, m.reason, &l4, skb->len, now);
		if (!local)
			ct_remember(ct_way(ct, m.reason), gen, 0, 0, dst);
	}
	traced = m.reason == CT_NEW ||
		 trace_wanted(ct, CT_SLOT_TO_CONTAINER | (m.reason == CT_REPLY), &l4);
	if (traced && !local)
		m.src_identity = lookup_identity(saddr);
	if (m.reason == CT_NEW && admit_ingress(skb, &m, saddr, daddr, proto, &l4))
		return TC_ACT_SHOT;
	count(skb, METRIC_INGRESS, REASON_FORWARDED);
	count_endpoint(skb, dst->endpoint_id, 1);
	if (traced)
		emit_trace(skb, &m, TRACE_TO_LXC);
	return TC_ACT_OK;
}

int to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop_early(skb, METRIC_INGRESS, DROP_INVALID);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return to_container_ipv4(skb);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;    /* the host resolving the pod's address */
	return drop_early(skb, METRIC_INGRESS, DROP_UNKNOWN_L3);
}

/* A packet from a pod on another node, decapsulated (from_overlay: SRC_IDENTITY from the
 * VNI) or natively routed (from_netdev: from the ipcache); POINT: the trace's observation
 * point. Only a local endpoint receives; a source inside this node's pod CIDR cannot come
 * from another node. The destination's ingress policy is applied for a new connection (the
 * sending node judged only egress), then the packet goes straight into the pod. */
static __always_inline int from_node_ipv4(struct __sk_buff *skb, __u32 src_identity, __u8 point)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct event_meta m = { .direction = METRIC_INGRESS, .src_identity = src_identity };
	struct endpoint_info *dst;
	struct l4_tuple l4 = {};
	struct ct_entry *ct;
	struct ct_way *w;
	__be32 saddr, daddr;
	__u64 gen, now;
	__u8 ttl, proto;
	int traced;

	if ((void *)(ip4 + 1) > data_end || ip4->ihl < 5 || parse_l4(skb, ip4, &l4) < 0)
		return drop(skb, &m, DROP_INVALID);
	saddr = ip4->saddr;
	daddr = ip4->daddr;
	ttl = ip4->ttl;
	proto = ip4->protocol;
	gen = endpoints_gen();
	now = ct_clock();
	m.reason = ct_open(saddr, daddr, proto, &l4, now, &ct);
	/* Established, and its way knows the local pod it goes to: no endpoint lookup. */
	w = ct && !IN_POD_CIDR(saddr) && ttl > 1 ? known_way(ct, m.reason, &l4, gen, 0, CT_SLOT_TO_CONTAINER) : 0;
	if (w) {
		__u32 ifindex = w->to_ifindex;

		m.endpoint_id = w->to_endpoint;
		ct_account(ct, m.reason, &l4, skb->len, now);
		if (ipv4_forward(skb, w->host_mac, w->pod_mac) < 0)
			return drop(skb, &m, DROP_INVALID);
		count(skb, METRIC_INGRESS, REASON_REDIRECT_PEER);
		count_endpoint(skb, w->to_endpoint, 1);
		return bpf_redirect_peer(ifindex, 0);
	}
	dst = lookup_endpoint(daddr);
	if (!dst)
		return drop(skb, &m, DROP_UNKNOWN_TARGET);
	m.endpoint_id = dst->endpoint_id;
	m.dst_identity = dst->identity;
	if (IN_POD_CIDR(saddr) || ttl <= 1)
		return drop(skb, &m, IN_POD_CIDR(saddr) ? DROP_INVALID_SIP : DROP_INVALID);

	if (ct)
		ct_account(ct, m.reason, &l4, skb->len, now);
	traced = m.reason == CT_NEW ||
		 trace_wanted(ct, CT_SLOT_TO_CONTAINER | (m.reason == CT_REPLY), &l4);
	if (traced)
		emit_trace(skb, &m, point);
	if (m.reason == CT_NEW && admit_ingress(skb, &m, saddr, daddr, proto, &l4))
		return TC_ACT_SHOT;
	{
		__u32 ifindex = dst->ifindex;

		if (ct)
			ct_remember(ct_way(ct, m.reason), gen, 0, 0, dst);
		if (ipv4_forward(skb, dst->host_mac, dst->pod_mac) < 0)
			return drop(skb, &m, DROP_INVALID);
		count(skb, METRIC_INGRESS, REASON_REDIRECT_PEER);
		count_endpoint(skb, m.endpoint_id, 1);
		if (traced)
			emit_trace(skb, &m, TRACE_TO_LXC);
		return bpf_redirect_peer(ifindex, 0);
	}
}

int from_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_tunnel_key key = {};

	if ((void *)(eth + 1) > data_end)
		return drop_early(skb, METRIC_INGRESS, DROP_INVALID);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop_early(skb, METRIC_INGRESS, DROP_UNKNOWN_L3);
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop_early(skb, METRIC_INGRESS, DROP_INVALID);
	/* The VNI is the source identity only when one of the cluster's nodes sent it. */
	if (!tunnel_peer_known(bpf_htonl(key.remote_ipv4)))
		return drop_early(skb, METRIC_INGRESS, DROP_UNKNOWN_SENDER);
	return from_node_ipv4(skb, key.tunnel_id, TRACE_FROM_OVERLAY);
}

/* tc ingress of the node's underlay device in native routing with BPF host routing (Cilium's
 * from-netdev): a packet from another node for a local pod goes straight into the pod, its
 * ingress policy judged with the source identity from the ipcache, as from_overlay does.
 * Everything else (the host's own traffic, replies to masqueraded connections, ARP, what
 * is not addressed to this host, a source claiming a local pod's address, a TTL about to
 * expire) goes on to the host stack untouched, where it is handled as without this program. */
int from_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	__u32 identity;

	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	if (overlay_receive(skb, &identity) == OVERLAY_DECAPPED)
		return from_node_ipv4(skb, identity, TRACE_FROM_OVERLAY);
	data = (void *)(long)skb->data;    /* a failed decapsulation may have moved it */
	data_end = (void *)(long)skb->data_end;
	ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return TC_ACT_OK;
	if (ip4->ttl <= 1 || IN_POD_CIDR(ip4->saddr) || !lookup_endpoint(ip4->daddr))
		return TC_ACT_OK;
	return from_node_ipv4(skb, lookup_identity(ip4->saddr), TRACE_FROM_NETWORK);
}
