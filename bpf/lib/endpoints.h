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

/* The endpoint map's generation: after every change to cap_endpoints its owner writes here
 * a value it never wrote before (services/datapath/maps/endpoints.py), so a copy of endpoint
 * entries made at generation G (conntrack's ct_way) is still true while the generation is
 * G. Read it before the entries it stands for. */
#define ENDPOINTS_GEN_KEY 0

BPF_TABLE_PINNED("array", __u32, __u64, cap_endpoints_gen, 1, PIN_ROOT "/endpoints_gen");

static __always_inline __u64 endpoints_gen(void)
{
	__u32 key = ENDPOINTS_GEN_KEY;
	__u64 *gen = cap_endpoints_gen.lookup(&key);

	return gen ? *gen : 0;
}

static __always_inline struct endpoint_info *lookup_endpoint(__be32 ip)
{
	struct endpoint_key key = { .ip = ip };
	return cap_endpoints.lookup(&key);
}

#endif
