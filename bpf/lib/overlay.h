/* Tunnel mode, both sides. A packet from a pod to a pod whose ipcache entry names a tunnel
 * endpoint (another node's underlay address) leaves in VXLAN, the source's security identity
 * as the VNI, as Cilium does, so the receiving node (from_netdev, or from_overlay, in lxc.c)
 * enforces its pod's ingress policy without asking anyone who sent it. Pod identities are
 * below 2^24 (services/policyd/identity.py): a VNI holds them. The headers are standard
 * VXLAN, written and taken off here; the kernel's collect-metadata device (cap_vxlan) does
 * it for what these paths leave to it. */
#ifndef CAPILLARY_OVERLAY_H
#define CAPILLARY_OVERLAY_H

#include "common.h"
#include "ipcache.h"
#include "tunnel.h"
#include "metrics.h"
#include "events.h"
#include "endpoints.h"
#include "l3.h"
#include <uapi/linux/udp.h>

#define OVERLAY_TTL 64
#define OVERLAY_PASS (-1)      /* not for the overlay: the caller goes on */
#define VXLAN_FLAG_VNI 0x08000000  /* the I flag: the VNI is valid (RFC 7348) */
#define ECN_CE 3               /* the ECN bits of the IPv4 TOS byte: congestion experienced */
/* BPF_FIB_LOOKUP_SRC (kernel 6.8): the lookup also gives the source address the kernel would
 * pick. An older kernel refuses the flag, and packets take the VXLAN device. */
#define FIB_LOOKUP_SRC (1U << 4)

/* What goes in front of a pod's IPv4 packet on the wire, after the outer Ethernet header:
 * the 50 bytes the pods' MTU leaves room for. */
struct overlay_hdr {
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni;           /* VNI << 8 */
	struct ethhdr inner;
} __attribute__((packed));

/* Sending, the fast way: when the kernel's FIB reaches ENDPOINT (the other node's underlay
 * address) through a resolved neighbour, from_container writes the VXLAN headers itself and
 * sends the packet out of the underlay device. FIB holds the answer: 0, or OVERLAY_PASS (no
 * route, no neighbour yet, a packet that would not fit, BPF host routing off): the VXLAN
 * device then takes it, as the kernel's path resolves neighbours and answers with ICMP. */
static __always_inline int overlay_route(struct __sk_buff *skb, __be32 endpoint, struct bpf_fib_lookup *fib)
{
#if defined(HOST_STACK) || defined(HOST_LEGACY_ROUTING)
	return OVERLAY_PASS;
#else
	fib->family = FIB_AF_INET;
	fib->ipv4_dst = endpoint;
	fib->ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, fib, sizeof(*fib), FIB_LOOKUP_SRC) != BPF_FIB_LKUP_RET_SUCCESS)
		return OVERLAY_PASS;
	/* GSO packets are cut to the pods' MTU, which leaves room for the headers; the whole
	 * packet must stay under IPv4's 64 KB. */
	if (skb->len - ETH_HLEN + sizeof(struct overlay_hdr) > 0xffff ||
	    (!skb->gso_size && skb->len - ETH_HLEN + sizeof(struct overlay_hdr) > fib->mtu_result))
		return OVERLAY_PASS;
	return 0;
#endif
}

/* Encapsulate the packet for the tunnel endpoint FIB was looked up for, with IDENTITY as the
 * VNI, and send it out of the underlay device. The headers are written in place: the room
 * the kernel makes after the Ethernet header is linear. OVERLAY_PASS, the packet unchanged,
 * when the kernel refused the room or the outer IPv4 length could not hold the packet (a BIG
 * TCP packet: the VXLAN device's GSO copes with those). */
static __always_inline int overlay_encap(struct __sk_buff *skb, struct bpf_fib_lookup *fib, __u32 identity)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct overlay_hdr *o;
	__u32 hash, len;
	__s64 sum;

	if (skb->len - ETH_HLEN + sizeof(*o) > 0xffff)
		return OVERLAY_PASS;
	hash = bpf_get_hash_recalc(skb);      /* the source port: the underlay's ECMP entropy */
	if (bpf_skb_adjust_room(skb, sizeof(*o), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
				BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
				BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)) < 0)
		return OVERLAY_PASS;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	o = data + ETH_HLEN;
	if ((void *)(o + 1) > data_end)
		return TC_ACT_SHOT;      /* cannot happen once the room is made; reported */
	len = skb->len - ETH_HLEN;
	__builtin_memcpy(&o->inner, eth, sizeof(o->inner));   /* the pod's frame, as sent */
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	o->ip.version = 4;
	o->ip.ihl = 5;
	o->ip.tos = 0;
	o->ip.tot_len = bpf_htons(len);
	o->ip.id = (__be16)bpf_get_prandom_u32();
	o->ip.frag_off = 0;
	o->ip.ttl = OVERLAY_TTL;
	o->ip.protocol = IPPROTO_UDP;
	o->ip.check = 0;
	o->ip.saddr = fib->ipv4_src;
	o->ip.daddr = fib->ipv4_dst;
	o->udp.source = bpf_htons(0xc000 | (hash & 0x3fff));
	o->udp.dest = bpf_htons(OVERLAY_PORT);
	o->udp.len = bpf_htons(len - sizeof(o->ip));
	o->udp.check = 0;                        /* none, as the device sends it */
	o->vx_flags = bpf_htonl(VXLAN_FLAG_VNI);
	o->vx_vni = bpf_htonl(identity << 8);
	sum = bpf_csum_diff(0, 0, (__be32 *)&o->ip, sizeof(o->ip), 0);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	o->ip.check = (__sum16)~sum;
	return bpf_redirect(fib->ifindex, 0);
}

/* Encapsulate and send the packet when its destination's ipcache entry INFO (NULL: none)
 * names a tunnel endpoint; OVERLAY_PASS when it does not. M describes the packet (the source
 * endpoint, egress); TRACED: whether this packet is reported (a to-overlay trace). Without
 * the fast way (overlay_route), the packet gets its tunnel key and goes to the
 * collect-metadata VXLAN device. */
static __always_inline int overlay_send(struct __sk_buff *skb, struct event_meta *m,
					struct ipcache_info *info, int traced)
{
	union {                  /* one or the other: the stack is short */
		struct bpf_fib_lookup fib;
		struct bpf_tunnel_key key;
	} u = {};
	struct tunnel_info *dev;
	__u32 zero = TUNNEL_KEY;
	__u8 reason = DROP_NO_TUNNEL_ENDPOINT;
	int sent;

	if (!info || !info->tunnel_endpoint)
		return OVERLAY_PASS;
	dev = cap_tunnel.lookup(&zero);
	if (dev && dev->ifindex) {
		int fast = overlay_route(skb, info->tunnel_endpoint, &u.fib) == 0;

		if (traced)
			emit_trace(skb, m, TRACE_TO_OVERLAY);
		sent = fast ? overlay_encap(skb, &u.fib, m->src_identity) : OVERLAY_PASS;
		if (sent == OVERLAY_PASS) {
			__builtin_memset(&u, 0, sizeof(u));
			u.key.remote_ipv4 = bpf_ntohl(info->tunnel_endpoint);
			u.key.tunnel_id = m->src_identity;
			u.key.tunnel_ttl = OVERLAY_TTL;
			if (bpf_skb_set_tunnel_key(skb, &u.key, sizeof(u.key), BPF_F_ZERO_CSUM_TX) == 0)
				sent = bpf_redirect(dev->ifindex, 0);
		}
		if (sent != OVERLAY_PASS && sent != TC_ACT_SHOT) {
			count(skb, METRIC_EGRESS, REASON_FORWARDED);
			return sent;
		}
		reason = DROP_WRITE_ERROR;
	}
	m->reason = TRACE_REASON_UNKNOWN;
	emit_drop(skb, m, reason, 0);
	count(skb, METRIC_EGRESS, reason);
	return TC_ACT_SHOT;
}

/* Receiving side, before the kernel's VXLAN device: from_netdev (tc ingress of the underlay
 * device) takes a VXLAN packet to this node's port off the wire itself when its inner packet
 * is IPv4 for a local pod, and from_node_ipv4 delivers it. The kernel's collect-metadata
 * VXLAN receive gives every packet a metadata dst freed through RCU; this path has none.
 * Anything else (another port, IP options or fragments on the outer header, an outer UDP
 * checksum or congestion mark, an inner packet for no local pod, a sender that is no node
 * of the cluster) is left to the VXLAN device and from_overlay, unchanged: from_overlay
 * drops what an unknown sender sent. */
#define OVERLAY_DECAPPED 1

/* OVERLAY_DECAPPED with *IDENTITY (the VNI) when the packet was one for a local pod and its
 * outer headers are off (the skb now starts with the outer Ethernet header and the inner IPv4
 * packet); OVERLAY_PASS, the packet untouched, otherwise. */
static __always_inline int overlay_receive(struct __sk_buff *skb, __u32 *identity)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct overlay_hdr *o = data + ETH_HLEN;
	struct iphdr *inner = (void *)(o + 1);

	if ((void *)(inner + 1) > data_end)
		return OVERLAY_PASS;
	/* Left to the kernel: a UDP checksum to verify, and a congestion mark on the outer
	 * header (ECN CE), which RFC 6040 decapsulation carries over to the inner one. */
	if (o->ip.ihl != 5 || o->ip.protocol != IPPROTO_UDP || (o->ip.frag_off & bpf_htons(0x3fff)) ||
	    (o->ip.tos & ECN_CE) == ECN_CE || o->udp.dest != bpf_htons(OVERLAY_PORT) || o->udp.check ||
	    o->vx_flags != bpf_htonl(VXLAN_FLAG_VNI) || o->inner.h_proto != bpf_htons(ETH_P_IP) ||
	    !lookup_endpoint(inner->daddr) || !tunnel_peer_known(o->ip.saddr))
		return OVERLAY_PASS;
	*identity = bpf_ntohl(o->vx_vni) >> 8;
	/* The outer IP, UDP and VXLAN headers and the inner Ethernet header go; the inner
	 * segments keep their size (FIXED_GSO: the GSO size is the inner TCP's). A GSO packet
	 * keeps its UDP-tunnel GSO type and encapsulation mark: the kernel's VXLAN receive
	 * clears them, and a BPF program cannot before BPF_F_ADJ_ROOM_DECAP_L4_UDP (after
	 * 6.18). A pod's own stack ignores them; where a pod routes such a packet on to a
	 * device that segments in software, they would misdirect the segmentation. Nodes with
	 * such pods keep the kernel's path with datapath.hostLegacyRouting. */
	if (bpf_skb_adjust_room(skb, -(int)sizeof(struct overlay_hdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO) < 0)
		return OVERLAY_PASS;
	return OVERLAY_DECAPPED;
}

#endif
