/* Per-endpoint policy: one LPM trie for every endpoint. Owner: policyd
 * (services/datapath/maps/policy.py mirrors these structs; a test compares them).
 *
 * Key bits, in match order: endpoint id (16), direction (8), pad (8), peer identity (32),
 * protocol (8), pad (8), destination port (16). An entry's prefix length says how much
 * of that it pins down:
 *   32  the endpoint's default for the direction (POLICY_DEFAULT: allow-all when no policy
 *       selects it, else default deny)
 *   64  a peer identity, any protocol and port          (identity 0: any peer)
 *   72  ... and one protocol, any port
 *   80+ ... and a port block (ranges are split into aligned blocks)
 * Every packet of a new connection is looked up twice, with the peer's identity and with
 * identity 0; a deny found by either wins, then an allow, then the default.
 */
#ifndef CAPILLARY_POLICY_H
#define CAPILLARY_POLICY_H

#include "common.h"

#ifndef POLICY_MAP_SIZE
#define POLICY_MAP_SIZE 16384
#endif

#define POLICY_INGRESS 0
#define POLICY_EGRESS  1
#define POLICY_FULL_PREFIX 96

/* Entry flags. Shared with services/datapath/numbers.py. */
#define POLICY_DENY     1
#define POLICY_AUDIT    2
#define POLICY_DEFAULT  4

/* Verdicts of a policy decision. Shared with services/datapath/numbers.py. */
#define VERDICT_FORWARDED 0
#define VERDICT_DROPPED   1
#define VERDICT_AUDIT     2

/* What kind of rule an entry stands for (Cilium's policy match types, reported in
 * policy-verdict events). policyd derives it from the rule's key: a peer identity and/or
 * a port. Default entries are NONE. Shared with services/datapath/numbers.py. */
#define POLICY_MATCH_NONE       0
#define POLICY_MATCH_L3_ONLY    1   /* a peer, any protocol and port */
#define POLICY_MATCH_L3_L4      2   /* a peer and a port */
#define POLICY_MATCH_L4_ONLY    3   /* any peer, a port */
#define POLICY_MATCH_ALL        4   /* any peer, any protocol and port */
#define POLICY_MATCH_L3_PROTO   5   /* a peer and a protocol, any port */
#define POLICY_MATCH_PROTO_ONLY 6   /* any peer, a protocol, any port */

struct policy_key {
	__u32  prefixlen;
	__be16 endpoint_id;
	__u8   egress;
	__u8   pad1;
	__be32 identity;
	__u8   protocol;
	__u8   pad2;
	__be16 dport;
};

struct policy_entry {
	__u16 flags;
	__u8  match_type;    /* POLICY_MATCH_* */
	__u8  pad;
	__u32 rule_id;       /* policyd's rule table: which policy and rule made this entry */
	__u64 packets;
	__u64 bytes;
};

BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_entry, cap_policy,
		 POLICY_MAP_SIZE, PIN_ROOT "/policy", BPF_F_NO_PREALLOC);

struct policy_result {
	__u32 verdict;       /* VERDICT_* */
	__u32 reason;        /* drop reason when dropped or audited */
	__u32 rule_id;
	__u32 match_type;    /* POLICY_MATCH_* of the deciding entry */
};

static __always_inline struct policy_entry *policy_find(__u16 ep, __u8 egress, __u32 identity,
							__u8 proto, __u16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_PREFIX,
		.endpoint_id = bpf_htons(ep),
		.egress = egress,
		.identity = bpf_htonl(identity),
		.protocol = proto,
		.dport = bpf_htons(dport),
	};
	return cap_policy.lookup(&key);
}

static __always_inline void policy_account(struct policy_entry *e, __u32 len)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
}

/* The verdict for a new connection of ENDPOINT in one direction with a PEER identity. */
static __always_inline struct policy_result policy_check(__u16 ep, __u8 egress, __u32 peer,
							 __u8 proto, __u16 dport, __u32 len)
{
	struct policy_result res = { .verdict = VERDICT_DROPPED, .reason = DROP_POLICY };
	struct policy_entry *exact = policy_find(ep, egress, peer, proto, dport);
	struct policy_entry *any = policy_find(ep, egress, 0, proto, dport);
	struct policy_entry *hit = 0;
	__u32 fe = exact ? exact->flags : POLICY_DEFAULT;
	__u32 fa = any ? any->flags : POLICY_DEFAULT;

	if (exact && (fe & (POLICY_DENY | POLICY_DEFAULT)) == POLICY_DENY)
		hit = exact;
	else if (any && (fa & (POLICY_DENY | POLICY_DEFAULT)) == POLICY_DENY)
		hit = any;
	if (hit) {
		res.reason = DROP_POLICY_DENY;
	} else {
		if (exact && !(fe & POLICY_DEFAULT))
			hit = exact;
		else if (any && !(fa & POLICY_DEFAULT))
			hit = any;
		else
			hit = exact ? exact : any;   /* the direction's default entry, if any */
		if (!hit)
			return res;                  /* no state for this endpoint: fail closed */
		if (!(hit->flags & POLICY_DENY))
			res.verdict = VERDICT_FORWARDED;
	}
	res.rule_id = hit->rule_id;
	res.match_type = hit->match_type;
	policy_account(hit, len);
	if (res.verdict == VERDICT_DROPPED && (hit->flags & POLICY_AUDIT))
		res.verdict = VERDICT_AUDIT;
	return res;
}

#endif
