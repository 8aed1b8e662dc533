/* Stages (docs/partitioning.md): one model cut into programs of contiguous
 * layers, chained by tail calls inside one attach.
 *
 * bpf/xdpnn.c built with -DNN_STAGE=s runs layers [NN_STAGE_FIRST,
 * NN_STAGE_END) (the output layer is layer NN_HIDDEN).  Stage 0 parses the
 * packet; every stage but the last writes its activations into nn_stage
 * and tail-calls slot 0 of its nn_next; the last computes the output and
 * takes the class's action.  nn_stage is per CPU: a frame's stages run one
 * after the other on one CPU, so no other frame can come between them.
 * Stage s reads entry s % 2 and writes the other, so a stage run again on
 * its own (test runs with repeat, --measure) reads the same activations.
 *
 * A cut may fall inside a hidden layer, between groups of 64 neurons
 * (NN_STAGE_FIRST_G, NN_STAGE_END_G): the stage begins at group
 * NN_STAGE_FIRST_G of layer NN_STAGE_FIRST and ends before group
 * NN_STAGE_END_G of layer NN_STAGE_END.  A stage that ends inside a layer
 * hands on that layer's input and the groups it computed (done); the next
 * computes the rest.  A layer's groups are independent, so the split
 * changes no bit of the result.
 *
 * Later stages (NN_PIN_DIR set by the loader) open the first stage's
 * nn_config, nn_counters, nn_tx_port, nn_serve, nn_stage and nn_stage_err
 * pins (and, serving, nn_stage_req): every stage counts in one place.
 *
 * Serving (NN_SERVE): stage 0 parses the request and answers the malformed
 * ones itself, as one program does; for a valid one it saves what the
 * reply is built from (struct nn_req) in nn_stage_req, and the last stage
 * writes the reply with the class (and scores) over the frame, which the
 * stages between never touch. */
#ifndef XDPNN_STAGE_H
#define XDPNN_STAGE_H

#if !defined(NN_STAGE_FIRST) || !defined(NN_STAGE_END) || !defined(NN_STAGE_DIGEST)
#error "stage flags missing: the loader passes them (loader/stages.py)"
#endif
#ifndef NN_STAGE_FIRST_G
#define NN_STAGE_FIRST_G 0
#endif
#ifndef NN_STAGE_END_G
#define NN_STAGE_END_G 0
#endif
/* Hop chaining (NN_STAGE_HOP=1, docs/partitioning.md "Hop chaining"): each
 * stage is attached on an interface of its own and owns its maps; a stage
 * that hands on puts an outer Ethernet header (the frame's own addresses,
 * EtherType NN_STAGE_ETHERTYPE) in front of the carried activations and
 * sends the frame out of its peer, to the next hop. */
#ifndef NN_STAGE_HOP
#define NN_STAGE_HOP 0
#endif
#if NN_STAGE > 0 && !NN_STAGE_HOP && !defined(NN_PIN_DIR)
#error "a later stage opens the first stage's maps: NN_PIN_DIR missing"
#endif
#if NN_INPUT_MODE == NN_INPUT_FLOW
#error "stages run payload and headers models: a flow's cached class skips inference in stage 0"
#endif
_Static_assert(NN_MAX_WORDS <= NN_STAGE_MAX_WORDS, "activations must fit nn_stage_act");

#define NN_STAGE_LAST (NN_STAGE_END == NN_HIDDEN + 1)

/* Packet-carried activations (NN_STAGE_CARRY=1, docs/partitioning.md, "On the
 * wire"): a stage that hands on puts the 16-byte header (digest, next_layer,
 * bits) and the activation words in front of the frame (headroom: veth,
 * CPUMAP and test runs keep 256 bytes; tailroom depends on the skb); the
 * next stage reads them there and cuts them off, so the last stage has the
 * frame as it arrived.  NN_STAGE_NEXT_CPU >= 0: the next stage is the program of
 * that CPU's entry in nn_cpus (CPUMAP), not a tail call. */
#ifndef NN_STAGE_CARRY
#define NN_STAGE_CARRY 0
#endif
#ifndef NN_STAGE_NEXT_CPU
#define NN_STAGE_NEXT_CPU -1
#endif
#if NN_STAGE_NEXT_CPU >= 0 && !NN_STAGE_CARRY
#error "a CPUMAP chain carries the activations in the packet: NN_STAGE_CARRY=1"
#endif
#if NN_STAGE_HOP && (!NN_STAGE_CARRY || NN_STAGE_NEXT_CPU >= 0)
#error "a hop carries the activations in the packet, to a peer, not a CPU"
#endif
/* Bytes in front of the stage header: the outer Ethernet header on a hop. */
#if NN_STAGE_HOP
#define NN_STAGE_FRONT NN_STAGE_OUTER
#else
#define NN_STAGE_FRONT 0
#endif
/* Serving: the last stage replies with XDP_TX, which a CPUMAP program
 * cannot; the request's reply fields go to it through nn_stage_req, a
 * per-CPU map like nn_stage, so the chain is one of tail calls. */
#if defined(NN_SERVE) && NN_STAGE_CARRY
#error "served stages chain by tail calls with nn_stage, not packet-carried"
#endif

/* Input counts, in bits, of this stage's first layer and of the next's. */
#if NN_STAGE_FIRST == NN_HIDDEN
#define NN_STAGE_IN_BITS NN_OUT_IN
#else
#define NN_STAGE_IN_BITS NN_STAGE_PASTE(NN_L, NN_STAGE_FIRST, _IN)
#endif
#if NN_STAGE_END == NN_HIDDEN
#define NN_STAGE_OUT_BITS NN_OUT_IN
#elif !NN_STAGE_LAST
#define NN_STAGE_OUT_BITS NN_STAGE_PASTE(NN_L, NN_STAGE_END, _IN)
#endif
#define NN_STAGE_PASTE(a, b, c) NN_STAGE_PASTE2(a, b, c)
#define NN_STAGE_PASTE2(a, b, c) a##b##c

#define NN_STAGE_BYTES(bits) (8 * (((bits) + 63) / 64))

/* Groups of 64 neurons of hidden layer l, and those this stage runs: from
 * NN_STAGE_FIRST_G in its first layer, up to NN_STAGE_END_G in layer
 * NN_STAGE_END (none when that is 0). */
#define NN_STAGE_GROUPS(l) NN_GROUPS(NN_STAGE_PASTE(NN_L, l, _OUT))
#define NN_STAGE_LO(l) ((l) == NN_STAGE_FIRST ? NN_STAGE_FIRST_G : 0)
#define NN_STAGE_HI(l) ((l) == NN_STAGE_END ? NN_STAGE_END_G : NN_STAGE_GROUPS(l))
#define NN_STAGE_RUNS(l)                                                                \
	(NN_STAGE_FIRST <= (l) && (l) <= NN_STAGE_END && (l) < NN_HIDDEN &&              \
	 NN_STAGE_LO(l) < NN_STAGE_HI(l))
#if NN_STAGE_LAST && NN_STAGE_END_G
#error "the last stage ends with the output layer, which is never split"
#endif
#if defined(NN_IN_VALUE_BITS) && NN_IN_VALUE_BITS > 1 && \
	((NN_STAGE_FIRST == 0 && NN_STAGE_FIRST_G) || (NN_STAGE_END == 0 && NN_STAGE_END_G))
#error "a multi-bit first layer is never split"
#endif
/* Bytes of the finished groups carried in and out (done). */
#define NN_STAGE_DONE_IN (8 * NN_STAGE_FIRST_G)
#define NN_STAGE_DONE_OUT (8 * NN_STAGE_END_G)

/* The maps (nn_stage, nn_stage_err, nn_next) are declared in xdpnn.c: BCC
 * rewrites map accesses in the main file only. */

/* The activations for this stage (nn_stage entry NN_STAGE % 2) into x, or
 * the reason they are refused (enum nn_stage_error); -1 when taken. */
static __always_inline int stage_check(const struct nn_stage_act *act)
{
	if (act->digest != NN_STAGE_DIGEST)
		return NN_STAGE_BAD_DIGEST;
	if (act->next_layer != NN_STAGE_FIRST || act->next_group != NN_STAGE_FIRST_G)
		return NN_STAGE_BAD_LAYER;
	if (act->bits != NN_STAGE_IN_BITS)
		return NN_STAGE_BAD_BITS;
	return -1;
}

/* The activations into x and, when the stage begins inside a layer, the
 * groups already done into y (that layer's output buffer). */
static __always_inline int stage_read(const struct nn_stage_act *act, __u64 *x, __u64 *y)
{
	int refused = stage_check(act);
	if (refused >= 0)
		return refused;
	__builtin_memcpy(x, act->w, NN_MAX_WORDS * 8);
#if NN_STAGE_DONE_IN
	__builtin_memcpy(y, act->done, NN_STAGE_DONE_IN);
#endif
	return -1;
}

#if NN_STAGE_HOP
/* A frame of the hops' EtherType: a carrying frame (else not one for us). */
static __always_inline int stage_hop_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	if (data + sizeof(*eth) > (void *)(long)ctx->data_end)
		return 0;
	return eth->h_proto == bpf_htons(NN_STAGE_ETHERTYPE);
}
#endif

#if NN_STAGE_CARRY && NN_STAGE > 0
/* The activations at the front of the frame (after the outer Ethernet
 * header on a hop) into act (a per-CPU buffer), then cut off with that
 * header; a reason to refuse them, else -1. */
static __always_inline int stage_take(struct xdp_md *ctx, struct nn_stage_act *act)
{
	__u32 len = ctx->data_end - ctx->data;
	if (len < NN_STAGE_FRONT + NN_STAGE_HEADER + 14 ||
	    bpf_xdp_load_bytes(ctx, NN_STAGE_FRONT, act, NN_STAGE_HEADER))
		return NN_STAGE_TRUNCATED;
	int refused = stage_check(act);
	if (refused >= 0)
		return refused;
	/* bits is this layer's: the words' length is the one compiled in, and
	 * the groups done follow them. */
	__u32 words = NN_STAGE_FRONT + NN_STAGE_HEADER + NN_STAGE_BYTES(NN_STAGE_IN_BITS);
	__u32 carried = words + NN_STAGE_DONE_IN;
	if (len < carried + 14 ||
	    bpf_xdp_load_bytes(ctx, NN_STAGE_FRONT + NN_STAGE_HEADER, act->w,
			       NN_STAGE_BYTES(NN_STAGE_IN_BITS)))
		return NN_STAGE_TRUNCATED;
#if NN_STAGE_DONE_IN
	if (bpf_xdp_load_bytes(ctx, words, act->done, NN_STAGE_DONE_IN))
		return NN_STAGE_TRUNCATED;
#endif
	if (bpf_xdp_adjust_head(ctx, carried))
		return NN_STAGE_TRUNCATED; /* cannot happen: the frame keeps its 14 bytes */
	return -1;
}
#endif

#if !NN_STAGE_LAST
/* Hands the activations in x (and, ending inside a layer, its groups done
 * in y) to the next stage (entry (NN_STAGE + 1) % 2). */
static __always_inline void stage_write(struct nn_stage_act *act, const __u64 *x, const __u64 *y)
{
	act->digest = NN_STAGE_DIGEST;
	act->next_layer = NN_STAGE_END;
	act->next_group = NN_STAGE_END_G;
	act->bits = NN_STAGE_OUT_BITS;
	__builtin_memcpy(act->w, x, NN_MAX_WORDS * 8);
#if NN_STAGE_DONE_OUT
	__builtin_memcpy(act->done, y, NN_STAGE_DONE_OUT);
#endif
}

#if NN_STAGE_CARRY
/* Puts act's header and words in front of the frame; a reason it could not, else -1. */
static __always_inline int stage_put(struct xdp_md *ctx, const struct nn_stage_act *act)
{
	__u32 words = NN_STAGE_HEADER + NN_STAGE_BYTES(NN_STAGE_OUT_BITS);
	__u32 carried = NN_STAGE_FRONT + words + NN_STAGE_DONE_OUT;
	if (bpf_xdp_adjust_head(ctx, -(int)carried))
		return NN_STAGE_NO_ROOM;
	/* struct nn_stage_act is the header, then the words: one copy (and one
	 * more for the groups done). */
	int err = bpf_xdp_store_bytes(ctx, NN_STAGE_FRONT, (void *)act, words);
#if NN_STAGE_DONE_OUT
	err = err ?: bpf_xdp_store_bytes(ctx, NN_STAGE_FRONT + words, act->done, NN_STAGE_DONE_OUT);
#endif
#if NN_STAGE_HOP
	/* On the wire a proper Ethernet frame: the frame's own destination and
	 * source (it has its 14 bytes: stage 0 parsed them, later hops checked
	 * them), then the hops' EtherType. */
	__u8 addrs[12];
	__be16 type = bpf_htons(NN_STAGE_ETHERTYPE);
	err = err ?: bpf_xdp_load_bytes(ctx, carried, addrs, sizeof(addrs));
	err = err ?: bpf_xdp_store_bytes(ctx, 0, addrs, sizeof(addrs));
	err = err ?: bpf_xdp_store_bytes(ctx, 12, &type, sizeof(type));
#endif
	if (err) {
		bpf_xdp_adjust_head(ctx, carried);
		return NN_STAGE_NO_ROOM; /* cannot happen: the room was just made */
	}
	return -1;
}
#endif
#endif

/* Hidden layer l of this stage (its groups NN_STAGE_LO..HI): the stage's
 * input is in a, and layers alternate a -> b -> a as in bnn_infer. */
#define NN_STAGE_HIDDEN(l)                                                                   \
	do {                                                                                 \
		if ((l - NN_STAGE_FIRST) % 2 == 0)                                           \
			NN_HIDDEN_PART(l, a, b, NN_STAGE_LO(l), NN_STAGE_HI(l));             \
		else                                                                         \
			NN_HIDDEN_PART(l, b, a, NN_STAGE_LO(l), NN_STAGE_HI(l));             \
	} while (0)

/* Runs this stage's layers on a; returns the class (last stage), else 0,
 * and leaves the stage's output activations in *out: the input of layer
 * NN_STAGE_END, and in *done that layer's groups done when the stage
 * ends inside it. */
static __always_inline __u32 stage_layers(const __u64 *m, __u64 *a, __u64 *b, __u64 **out,
					  __u64 **done)
{
#if NN_STAGE_RUNS(0)
#if defined(NN_IN_VALUE_BITS) && NN_IN_VALUE_BITS > 1
	NN_FIRST_LAYER(a, b); /* a multi-bit first layer (bnn.h), whole */
#else
	NN_STAGE_HIDDEN(0);
#endif
#endif
#if NN_STAGE_RUNS(1)
	NN_STAGE_HIDDEN(1);
#endif
#if NN_STAGE_RUNS(2)
	NN_STAGE_HIDDEN(2);
#endif
#if NN_STAGE_RUNS(3)
	NN_STAGE_HIDDEN(3);
#endif
	/* Layers FIRST .. END-1 ran whole (or from FIRST_G): layer END's input
	 * is in b after an odd count, its groups done in the other buffer. */
#define NN_STAGE_HIDDEN_RUN ((NN_STAGE_END < NN_HIDDEN ? NN_STAGE_END : NN_HIDDEN) - NN_STAGE_FIRST)
	*out = NN_STAGE_HIDDEN_RUN % 2 ? b : a;
	*done = NN_STAGE_HIDDEN_RUN % 2 ? a : b;
#if NN_STAGE_LAST
	return bnn_output(m, *out);
#else
	return 0;
#endif
}

#endif
