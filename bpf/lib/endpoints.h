/* The endpoint map: every local pod by IPv4 address. Owner: endpointd
 * (services/datapath/maps/endpoints.py mirrors these structs; a test compares them). */
#ifndef CAPILLARY_ENDPOINTS_H
#define CAPILLARY_ENDPOINTS_H

#include "common.h"

#ifndef ENDPOINTS_MAP_SIZE
#define ENDPOINTS_MAP_SIZE 4096
#endif

struct endpoint_key {
	__be32 ip;
};

struct endpoint_info {
	__u32 ifindex;       /* host-side veth (lxc...) */
	__u32 identity;      /* security identity of the pod */
	__u16 endpoint_id;
	__u16 flags;         /* bit 0: policy audit mode (read by policyd, not the datapath) */
	__u8  host_mac[6];   /* MAC of the host-side veth: the pod's gateway MAC */
	__u8  pod_mac[6];    /* MAC of eth0 inside the pod */
};

BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info, cap_endpoints,
		 ENDPOINTS_MAP_SIZE, PIN_ROOT "/endpoints", BPF_F_NO_PREALLOC);

static __always_inline struct endpoint_info *lookup_endpoint(__be32 ip)
{
	struct endpoint_key key = { .ip = ip };
	return cap_endpoints.lookup(&key);
}

#endif
