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

#endif
