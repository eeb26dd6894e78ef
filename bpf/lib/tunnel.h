/* The overlay's device: where from_container sends what it encapsulates. One entry, written
 * by routed (services/routed/tunnel.py) when it makes the node's VXLAN device. Owner: routed
 * (services/datapath/maps/tunnel.py mirrors the struct; a test compares them). */
#ifndef CAPILLARY_TUNNEL_H
#define CAPILLARY_TUNNEL_H

#include "common.h"

/* The one key of cap_tunnel. */
#define TUNNEL_KEY 0

struct tunnel_info {
	__u32 ifindex;       /* the collect-metadata VXLAN device; 0: there is none */
	__u32 flags;
};

BPF_TABLE_PINNED("array", __u32, struct tunnel_info, cap_tunnel, 1, PIN_ROOT "/tunnel");

/* The cluster's other nodes, by underlay IPv4 address, in tunnel mode: the only senders
 * whose VXLAN packets are taken in. A received packet's VNI is believed as its source
 * identity, so one from any other address is dropped (DROP_UNKNOWN_SENDER), never
 * delivered. Written by routed from the alive members (services/routed/cluster.py); empty
 * in native routing. The value is unused (1). */
#ifndef TUNNEL_PEERS_MAP_SIZE
#define TUNNEL_PEERS_MAP_SIZE 4096
#endif

BPF_TABLE_PINNED("hash", __be32, __u32, cap_tunnel_peers, TUNNEL_PEERS_MAP_SIZE, PIN_ROOT "/tunnel_peers");

static __always_inline int tunnel_peer_known(__be32 underlay_ip)
{
	return cap_tunnel_peers.lookup(&underlay_ip) != 0;
}

#endif
