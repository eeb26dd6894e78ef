/* The ipcache: IPv4 prefix -> security identity (and, for a pod on another node reached
 * through the overlay, that node's underlay address), longest prefix wins. Owner: routed
 * (services/datapath/maps/ipcache.py mirrors these structs; a test compares them). */
#ifndef CAPILLARY_IPCACHE_H
#define CAPILLARY_IPCACHE_H

#include "common.h"

#ifndef IPCACHE_MAP_SIZE
#define IPCACHE_MAP_SIZE 65536
#endif

/* Reserved identities, Cilium's numbering. Shared with services/datapath/numbers.py. */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST    1
#define IDENTITY_WORLD   2

/* ipcache_info.flags: who wrote the entry. Only this one is read by the datapath (a pod on
 * another node, lib/host_routing.h); shared with services/routed/service.py (SOURCES). */
#define IPCACHE_SOURCE_REMOTE 5

struct ipcache_key {
	__u32  prefixlen;    /* LPM tries match on this many bits of ip */
	__be32 ip;
};

struct ipcache_info {
	__u32  identity;
	__u32  flags;
	__be32 tunnel_endpoint;   /* the remote node's underlay IPv4; 0: local, or not tunnelled */
};

BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_info, cap_ipcache,
		 IPCACHE_MAP_SIZE, PIN_ROOT "/ipcache", BPF_F_NO_PREALLOC);

static __always_inline struct ipcache_info *lookup_ipcache(__be32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };
	return cap_ipcache.lookup(&key);
}

static __always_inline __u32 lookup_identity(__be32 ip)
{
	struct ipcache_info *info = lookup_ipcache(ip);
	return info ? info->identity : IDENTITY_WORLD;
}

#endif
