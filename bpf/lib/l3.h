/* IPv4 forwarding helpers: what a router does to a packet it forwards. */
#ifndef CAPILLARY_L3_H
#define CAPILLARY_L3_H

#include "common.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_TTL_OFF  (ETH_HLEN + offsetof(struct iphdr, ttl))

/* Decrement the TTL and fix the header checksum. TTL is the high byte of its 16-bit word. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
	__u8 new_ttl = ttl - 1;

	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons(ttl << 8), bpf_htons(new_ttl << 8), 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, sizeof(new_ttl), 0);
}

/* Rewrite the Ethernet header for delivery into a pod: from its gateway, to its eth0. */
static __always_inline int rewrite_macs(struct __sk_buff *skb, const __u8 *src, const __u8 *dst)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

#endif
