/* The live-frames request generator (traffic/reqgen.py), and the counter of
 * its replies.
 *
 * reqgen: run by BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES inside the
 * client's namespace.  Run i writes a whole request frame, prepared request
 * i % GEN_SLOTS with request id i, and sends it out of the client's port.
 * The whole frame, because the page comes back from the server holding the
 * reply.  The frame given to BPF_PROG_RUN is one byte longer than a request,
 * and every run moves its start one byte on: the kernel resets a recycled
 * page's frame (length included) only when the frame's start differs from
 * where BPF_PROG_RUN put it, which it then always does.
 *
 * reqcount: on the client's port, counts the replies to those requests and
 * drops them: a reply whose class is that of its request's input is
 * `ok`, one with another class or an error status is `wrong`; anything
 * else is `other`.  The UDP checksum of requests is 0 (none: IPv4), and
 * replies are IPv4 without options, from the server's port. */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#include "xdpnn_shared.h"

#if !defined(GEN_SLOTS) || !defined(GEN_FRAME_BYTES) || !defined(GEN_PORT)
#error "GEN_SLOTS, GEN_FRAME_BYTES and GEN_PORT missing: traffic/reqgen.py passes them"
#endif
#if GEN_SLOTS & (GEN_SLOTS - 1)
#error "GEN_SLOTS must be a power of two"
#endif

#define GEN_HDR_OFFSET (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct gen_frame {
	__u8 bytes[GEN_FRAME_BYTES];
};

/* The request frames to cycle through; written by traffic/reqgen.py. */
BPF_ARRAY(gen_frames, struct gen_frame, GEN_SLOTS);
/* The reference's class of each; written by traffic/reqgen.py. */
BPF_ARRAY(gen_classes, __u8, GEN_SLOTS);
/* [0] ifindex of the port to send from; written by traffic/reqgen.py. */
BPF_ARRAY(gen_port, __u32, 1);
/* [0] requests generated so far: the next request's id.  One sender runs
 * at a time (a BPF_PROG_RUN call stays on one CPU): no atomic increment. */
BPF_ARRAY(gen_sent, __u64, 1);
/* [0] ok, [1] wrong, [2] other; read by traffic/reqgen.py. */
BPF_PERCPU_ARRAY(gen_count, __u64, 3);

int reqgen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *port = gen_port.lookup(&zero);
	__u64 *sent = gen_sent.lookup(&zero);
	if (!port || !sent)
		return XDP_ABORTED; /* cannot happen: one-entry arrays always exist */
	if (bpf_xdp_adjust_head(ctx, 1))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 id = *sent;
	(*sent)++;
	__u32 i = id & (GEN_SLOTS - 1);
	struct gen_frame *f = gen_frames.lookup(&i);
	if (!f || data + GEN_FRAME_BYTES > data_end)
		return XDP_ABORTED;
	/* A constant size: clang expands it into plain loads and stores. */
	__builtin_memcpy(data, f->bytes, GEN_FRAME_BYTES);
	__u8 *p = data + GEN_HDR_OFFSET + NN_SRV_OFF_ID;
	if ((void *)(p + 8) > data_end)
		return XDP_ABORTED;
	__u64 be = __builtin_bswap64(id);
	__builtin_memcpy(p, &be, 8);
	return bpf_redirect(*port, 0);
}

static __always_inline void count(__u32 k)
{
	__u64 *v = gen_count.lookup(&k);
	if (v)
		(*v)++;
}

int reqcount(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *h = (void *)(udp + 1);
	if ((void *)(h + NN_SRV_OFF_SCORES) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP || udp->source != bpf_htons(GEN_PORT)) {
		count(2);
		return XDP_DROP;
	}
	__u64 be;
	__builtin_memcpy(&be, h + NN_SRV_OFF_ID, 8);
	__u32 i = __builtin_bswap64(be) & (GEN_SLOTS - 1);
	__u8 *cls = gen_classes.lookup(&i);
	if (cls && h[NN_SRV_OFF_STATUS] == NN_SRV_OK && h[NN_SRV_OFF_CLASS] == *cls)
		count(0);
	else
		count(1);
	return XDP_DROP;
}
