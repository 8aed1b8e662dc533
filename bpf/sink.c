/* The receiver's and sender's end of a test topology: counts every frame
 * and passes it to the stack (or drops it with -DSINK_DROP, for rate
 * measurements).  An XDP program on these veth ends is also what lets the
 * datapath redirect into their peers (PLATFORM: veth needs it). */
BPF_PERCPU_ARRAY(sink_count, __u64, 2); /* [0] packets, [1] bytes; read by traffic/sink.py */

int sink(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = sink_count.lookup(&k);
	if (v)
		(*v)++;
	k = 1;
	v = sink_count.lookup(&k);
	if (v)
		*v += ctx->data_end - ctx->data;
#ifdef SINK_DROP
	return XDP_DROP;
#else
	return XDP_PASS;
#endif
}
