/* A socket filter that writes a numbered record into a ring buffer for every datagram its
 * socket receives (and then drops the datagram); every DISCARD_EVERY-th record is reserved
 * and then discarded. Used by test_ringbuf.py to check services/datapath/ringbuf.py. */

struct record {
	__u32 seq;
	__u32 len;           /* bytes of pad[] that belong to the record */
	__u8  pad[56];
};

BPF_RINGBUF_OUTPUT(test_ring, 1);        /* one page: wraps around every few dozen records */
BPF_ARRAY(test_seq, __u32, 1);

int writer(struct __sk_buff *skb)
{
	__u32 zero = 0, *seq;
	struct record *r;

	seq = test_seq.lookup(&zero);
	if (!seq)
		return 0;
	r = test_ring.ringbuf_reserve(sizeof(*r));
	if (!r)
		return 0;
	r->seq = *seq;
	r->len = (*seq * 8) % 57;
	*seq += 1;
	if (r->seq % DISCARD_EVERY == DISCARD_EVERY - 1)
		test_ring.ringbuf_discard(r, 0);
	else
		test_ring.ringbuf_submit(r, 0);
	return 0;
}
