/* IPv4 forwarding helpers: what a router does to a packet it forwards. */
#ifndef CAPILLARY_L3_H
#define CAPILLARY_L3_H

#include "common.h"

#define FIB_AF_INET 2          /* AF_INET, for bpf_fib_lookup */

/* Forward the IPv4 packet in SKB into a pod, as a router: TTL down by one (the caller checked
 * it is above 1), the header checksum fixed incrementally (RFC 1624: TTL is the high byte of
 * its 16-bit word, so the sum grows by 0x0100), and the Ethernet header from its gateway
 * (SRC) to its eth0 (DST). Direct packet writes, no helper calls: the verifier's prologue
 * unclones a cloned skb before the program runs. -1: the headers are not in the linear
 * data (cannot happen after a parse, checked for the verifier). */
static __always_inline int ipv4_forward(struct __sk_buff *skb, const __u8 *src, const __u8 *dst)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	__u32 check;

	if ((void *)(ip4 + 1) > data_end)
		return -1;
	check = (__u32)ip4->check + bpf_htons(0x0100);
	ip4->check = (__sum16)(check + (check >= 0xffff));
	ip4->ttl--;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return 0;
}

#endif
