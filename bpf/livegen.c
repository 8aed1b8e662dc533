/* The live-frames traffic generator (traffic/livegen.py): run by
 * BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES inside the sender's network
 * namespace, it turns one prepared frame into a stream of requests with
 * varied inputs.  Each run copies input i = (runs so far) % GEN_SLOTS into
 * the frame's payload, then sends the frame out of the sender's port.
 *
 * The frame's UDP checksum is 0 (none, legal in IPv4), so rewriting the
 * payload needs no checksum update. */
#if !defined(GEN_SLOTS) || !defined(GEN_PAYLOAD_OFFSET) || !defined(GEN_PAYLOAD_BYTES)
#error "GEN_SLOTS, GEN_PAYLOAD_OFFSET and GEN_PAYLOAD_BYTES missing: traffic/livegen.py passes them"
#endif
#if GEN_SLOTS & (GEN_SLOTS - 1)
#error "GEN_SLOTS must be a power of two"
#endif

struct gen_payload {
	__u8 bytes[GEN_PAYLOAD_BYTES];
};

/* The inputs to cycle through; written by traffic/livegen.py. */
BPF_ARRAY(gen_payloads, struct gen_payload, GEN_SLOTS);
/* [0] ifindex of the port to send from; written by traffic/livegen.py. */
BPF_ARRAY(gen_port, __u32, 1);
/* [0] frames generated so far on this CPU; the index of the next input. */
BPF_PERCPU_ARRAY(gen_sent, __u64, 1);

int livegen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *port = gen_port.lookup(&zero);
	__u64 *sent = gen_sent.lookup(&zero);
	if (!port || !sent)
		return XDP_ABORTED; /* cannot happen: one-entry arrays always exist */

	__u32 i = *sent & (GEN_SLOTS - 1);
	(*sent)++;
	struct gen_payload *p = gen_payloads.lookup(&i);
	__u8 *dst = data + GEN_PAYLOAD_OFFSET;
	if (!p || (void *)(dst + GEN_PAYLOAD_BYTES) > data_end)
		return XDP_ABORTED;
	/* A constant size: clang expands it into plain loads and stores. */
	__builtin_memcpy(dst, p->bytes, GEN_PAYLOAD_BYTES);
	return bpf_redirect(*port, 0);
}
