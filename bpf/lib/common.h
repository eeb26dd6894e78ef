/* Numbers and helpers shared by every capillary program.
 *
 * Build-time options (passed as -D by services/datapath/loader.py):
 *   PIN_ROOT        string, bpffs directory holding every pinned map
 *   ROUTER_IP       u32 in network byte order, the pods' gateway address
 *   POD_CIDR_NET    u32 in network byte order, the node's pod CIDR (its network address)
 *   POD_CIDR_MASK   u32 in network byte order, the pod CIDR's netmask
 *   HOST_STACK      defined: pod->pod traffic goes through the host stack (no redirect)
 *   HOST_LEGACY_ROUTING defined: the host stack forwards to and from other nodes
 *   OVERLAY_PORT    the overlay's UDP port (VXLAN)
 *   *_MAP_SIZE      map sizes from the node config
 */
#ifndef CAPILLARY_COMMON_H
#define CAPILLARY_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#ifndef PIN_ROOT
#error "PIN_ROOT must be defined"
#endif
#if !defined(POD_CIDR_NET) || !defined(POD_CIDR_MASK)
#error "POD_CIDR_NET and POD_CIDR_MASK must be defined"
#endif
#ifndef OVERLAY_PORT
#error "OVERLAY_PORT must be defined"
#endif

/* Forwarding and drop reasons. Shared with services/datapath/numbers.py (REASONS);
 * tests/unit/test_shared_numbers.py keeps the two equal. Values >= 130 are Cilium's
 * drop reasons, so tools that know Cilium's codes read ours. */
#define REASON_FORWARDED        0   /* passed to the host stack */
#define REASON_REDIRECT_PEER    1   /* delivered into the peer pod with bpf_redirect_peer */
#define REASON_ARP_REPLY        2   /* ARP for the router answered in BPF */
#define DROP_INVALID_SIP        132 /* source IP is not the endpoint's own */
#define DROP_POLICY             133 /* no policy entry allows it */
#define DROP_INVALID            134 /* malformed packet */
#define DROP_UNKNOWN_L3         139 /* not IPv4 or ARP: capillary handles no other L3 protocol */
#define DROP_WRITE_ERROR        141 /* the packet could not be rewritten (e.g. its tunnel key set) */
#define DROP_UNKNOWN_TARGET     150 /* to an address of the pod CIDR that is no known endpoint */
#define DROP_NO_TUNNEL_ENDPOINT 160 /* for another node through the overlay, but no overlay device */
#define DROP_UNKNOWN_SENDER     172 /* VXLAN from an address that is no node of the cluster */
#define DROP_POLICY_DENY        181 /* a deny rule matched */

/* Whether IP (network byte order) is in this node's pod CIDR: one mask compare. */
#define IN_POD_CIDR(ip) (((ip) & POD_CIDR_MASK) == POD_CIDR_NET)

/* Metric directions, Cilium's numbering. Shared with services/datapath/numbers.py. */
#define METRIC_INGRESS  1
#define METRIC_EGRESS   2

#endif
