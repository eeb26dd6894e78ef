/* ARP responder: the pod's gateway (ROUTER_IP) answers from BPF with the host veth's MAC,
 * so no sysctl (proxy_arp) on the host is needed. */
#ifndef CAPILLARY_ARP_H
#define CAPILLARY_ARP_H

#include "common.h"

struct arp_eth_ipv4 {
	__u8   sha[ETH_ALEN];
	__be32 sip;
	__u8   tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* Returns 1 and fills REPLY when the packet is an ARP request for the router. */
static __always_inline int arp_wants_router(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = data + sizeof(*eth);
	struct arp_eth_ipv4 *body = data + sizeof(*eth) + sizeof(*arp);

	if ((void *)(body + 1) > data_end)
		return 0;
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || arp->ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->ar_pro != bpf_htons(ETH_P_IP) || arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return 0;
	return body->tip == ROUTER_IP;
}

/* Turn the request in SKB into a reply from ROUTER_IP at ROUTER_MAC, sent back to the pod. */
static __always_inline int arp_respond(struct __sk_buff *skb, const __u8 *router_mac)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = data + sizeof(*eth);
	struct arp_eth_ipv4 *body = data + sizeof(*eth) + sizeof(*arp);
	__u8 mac[ETH_ALEN];
	__be32 sip;

	if ((void *)(body + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, router_mac, ETH_ALEN);
	sip = body->sip;

	__builtin_memcpy(eth->h_dest, body->sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(body->tha, body->sha, ETH_ALEN);
	body->tip = sip;
	__builtin_memcpy(body->sha, mac, ETH_ALEN);
	body->sip = ROUTER_IP;
	return bpf_redirect(skb->ifindex, 0);
}

#endif
