/* The floor of any redirect_peer datapath, for bench/datapath.py: parse Ethernet and IPv4,
 * look the destination up in one hash map, rewrite the MACs, bpf_redirect_peer. Nothing
 * else: no conntrack, policy, counters or events. What capillary's from_container costs
 * beyond this is what its features cost. Not part of capillary; never attached by a node.
 *
 * empty: returns at once. Its run time under the kernel's statistics is what the
 * statistics themselves add to every program's figure. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>

struct floor_dest {
	__u32 ifindex;       /* host-side veth of the destination */
	__u8  src_mac[6];    /* that veth's MAC */
	__u8  dst_mac[6];    /* the destination pod's eth0 */
};

BPF_HASH(floor_dests, __be32, struct floor_dest, 16);

int floor_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct floor_dest *d;

	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	d = floor_dests.lookup(&ip4->daddr);
	if (!d)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, d->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, d->src_mac, ETH_ALEN);
	return bpf_redirect_peer(d->ifindex, 0);
}

int empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
