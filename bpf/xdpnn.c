/* xdpnn: binarized MLP inference on every packet, beside a forwarding path.
 *
 * Per packet: parse (parse.h) -> model input or a reason it has none ->
 * inference (bnn.h) -> the class's action; packets that are not classified
 * take the default path untouched.  The default path is the forwarding
 * peer (DEVMAP redirect) when there is one, else the local stack.  The
 * redirect action sends a class out of an interface of its own, through
 * the same DEVMAP.
 *
 * Compiled by loader/compile.py with the model's shape as -D flags.
 * Two benchmark variants (traffic/bench.py), off unless defined:
 *   NN_FORWARD_ONLY  skip parsing and inference: the default path alone, the
 *                    baseline that inference is compared against;
 *   NN_REFLECT       the default path is XDP_TX (back out of the ingress port).
 * And NN_SERVE (attach --serve, payload models): requests with a header are
 * answered from here with XDP_TX (serve.h, docs/serving.md).
 *
 * Several models on one interface (`xdpnn model add`): the attached
 * program serves model id 0 and tail-calls nn_progs[id] for a request to
 * another id (tailcall.h).  Each added model is this same file built for
 * its own shape with NN_MODEL_ID=<id> and NN_PIN_DIR=<the attached
 * program's pin folder>: it has its own model map, scratch and counters,
 * and shares the interface's nn_config and nn_serve.  Without serving,
 * the attached program chooses an added model by the packet's TCP or UDP
 * destination port (nn_port_models); such a model has its own nn_config
 * (its actions) and shares the forwarding ports (nn_tx_port).
 *
 * Flow mode (NN_INPUT_FLOW, flow.h): the input is the packet's flow record,
 * and a flow whose class is final skips inference.
 *
 * Stages (NN_STAGE=s, stage.h, docs/partitioning.md): a model too big for
 * one program runs as several, each computing a range of layers, chained
 * by tail calls; stage 0 is the attached program.  Served, stage 0 parses
 * the request and the last stage replies. */
#include "xdpnn_shared.h"

#ifndef NN_MODEL_ID
#define NN_MODEL_ID 0 /* the attached program */
#endif
_Static_assert(NN_MODEL_ID >= 0 && NN_MODEL_ID < NN_SRV_MODELS, "a model id indexes nn_serve");

#ifndef NN_INPUT_MODE
#error "NN_INPUT_MODE missing: the loader passes it"
#endif
#if !defined(NN_IN_BITS) || !defined(NN_IN_BYTES) || !defined(NN_IN_WORDS) || \
	!defined(NN_IN_TAIL_MASK) || !defined(NN_MODEL_WORDS)
#error "input shape flags missing: the loader passes them from the model file"
#endif

#include "parse.h"
#include "bnn.h"
#include "tailcall.h"
#if NN_INPUT_MODE == NN_INPUT_FLOW
#include "flow.h"
#endif
#if defined(NN_STAGE) && NN_STAGE > 0
#define NN_STAGE_TAKES 1 /* takes activations from the stage before */
#if defined(NN_STAGE_HOP) && NN_STAGE_HOP
#define NN_LATER_STAGE 0 /* a hop: attached alone, with maps of its own */
#else
#define NN_LATER_STAGE 1 /* opens the first stage's maps (stage.h) */
#endif
#else
#define NN_STAGE_TAKES 0
#define NN_LATER_STAGE 0
#endif
#ifdef NN_SERVE
#include "serve.h"
#endif

/* nn_counters.verdict is indexed by the returned XDP action. */
_Static_assert(NN_VERDICT__COUNT <= 8, "NN_COUNT's mask for verdicts is 7");
_Static_assert(NN_VERDICT_ABORTED == XDP_ABORTED && NN_VERDICT_DROP == XDP_DROP &&
	       NN_VERDICT_PASS == XDP_PASS && NN_VERDICT_TX == XDP_TX &&
	       NN_VERDICT_REDIRECT == XDP_REDIRECT, "enum nn_verdict must follow enum xdp_action");

struct nn_model_words {
	__u64 w[NN_MODEL_WORDS];
};

/* The model: nn_model[0] is an inner map whose one entry holds the model's
 * words.  The loader never rewrites a model in force: a swap fills a new
 * inner map, then replaces nn_model[0] in one update.  A packet looks up
 * nn_model[0] once, so it runs one model from start to end; the kernel frees
 * the old inner map after an RCU grace period, once no packet can hold it.
 * nn_model_words is the inner maps' template (type, key and value sizes),
 * and the first model's map. */
BPF_ARRAY(nn_model_words, struct nn_model_words, 1);
BPF_ARRAY_OF_MAPS(nn_model, "nn_model_words", 1);
/* Port, actions, redirect slots and the forwarding pair; written by the loader.
 * Shared by every serving program of the interface (tailcall.h, NN_SHARED);
 * a model chosen by port has its own, for its own actions. */
#if NN_MODEL_ID != 0 && !defined(NN_SERVE)
#define NN_BY_PORT 1
BPF_ARRAY(nn_config, struct nn_config, 1);
#else
NN_SHARED("array", struct nn_config, nn_config, 1);
#endif
/* Counters per input result, verdict and class, one entry per ingress side;
 * read by `xdpnn stats` and the exporter. */
#if NN_LATER_STAGE
NN_SHARED("percpu_array", struct nn_counters, nn_counters, NN_SIDES);
#else
BPF_PERCPU_ARRAY(nn_counters, struct nn_counters, NN_SIDES);
#endif
/* Egress ports: the forwarding pair (slots 0, 1), then redirect targets;
 * written by the loader. */
#if NN_LATER_STAGE || defined(NN_BY_PORT)
/* The attached program's, opened at its pin: the same egress. */
BPF_XDP_REDIRECT_MAP("devmap:" NN_PIN_DIR "/nn_tx_port", int, nn_tx_port, NN_TX_SLOTS);
#else
BPF_DEVMAP(nn_tx_port, NN_TX_SLOTS);
#endif
#ifdef NN_STAGE
#include "stage.h"
/* Activations between stages, and why a stage refused some (stage.h). */
NN_SHARED("percpu_array", struct nn_stage_act, nn_stage, NN_STAGE_SLOTS);
NN_SHARED("percpu_array", __u64, nn_stage_err, NN_STAGE__COUNT);
#ifdef NN_SERVE
/* The request being answered, from stage 0 to the last (stage.h). */
NN_SHARED("percpu_array", struct nn_req, nn_stage_req, 1);
#endif
#if !NN_STAGE_LAST && NN_STAGE_NEXT_CPU >= 0
/* The next stage's program as the entry of its CPU (struct bpf_cpumap_val:
 * queue size, program fd); filled by the loader. */
BPF_XDP_REDIRECT_MAP("cpumap", __u64, nn_cpus, NN_STAGE_CPU_SLOTS);
#elif !NN_STAGE_LAST && !NN_STAGE_HOP
/* The next stage's program, in slot 0; filled by the loader. */
NN_PROG_ARRAY(nn_next, 1);
#endif

static __always_inline void stage_count(__u32 reason)
{
	__u64 *n = nn_stage_err.lookup(&reason);
	if (n)
		(*n)++;
}
#endif

#if NN_MODEL_ID == 0 && !NN_LATER_STAGE
/* The attach record (JSON) that `xdpnn status` and later commands read;
 * written by the loader, never read by the program.  It names the added
 * models too, so they have none of their own. */
struct nn_meta {
	char json[NN_META_BYTES];
};
BPF_ARRAY(nn_meta, struct nn_meta, 1);
/* The programs of the models added to this interface, by model id; filled
 * by the loader (`xdpnn model add`). */
NN_PROG_ARRAY(nn_progs, NN_SRV_MODELS);
/* Without serving: the model id for each TCP/UDP destination port, 0 for
 * the attached model (`xdpnn model add --port`).  An array, so the lookup
 * costs no hashing; skipped unless nn_config.port_models says any is set. */
BPF_ARRAY(nn_port_models, __u32, 65536);
#endif

/* Activations of the layer being computed: too big for the 512-byte BPF
 * stack in large models; per CPU, so packets never share one. */
struct nn_scratch {
	__u64 a[NN_MAX_WORDS];
	__u64 b[NN_MAX_WORDS];
	__u64 record[NN_FEATURE_BYTES / 8]; /* headers mode: the feature record */
#ifdef NN_SERVE
	struct nn_req req;                  /* the request being answered */
	__u64 scores[NN_CLASSES];           /* its scores, big endian */
#endif
};
BPF_PERCPU_ARRAY(nn_scratch, struct nn_scratch, 1);

/* Serving counters per model id (entry NN_SRV_MODELS: the rest); written by
 * the programs, read by `xdpnn stats`.  Declared in every build, so every
 * datapath pins the same maps; shared by the interface's programs. */
NN_SHARED("percpu_array", struct nn_serve_counters, nn_serve, NN_SRV_MODELS + 1);

#if NN_INPUT_MODE == NN_INPUT_FLOW
/* Flow mode (flow.h): the flow table, written by the program only.  LRU:
 * when it is full, the least recently used flow makes room (and comes back
 * as a new flow). */
BPF_TABLE("lru_hash", struct nn_flow_key, struct nn_flow, nn_flows, NN_FLOW_ENTRIES);
/* Replay builds (evaluate, tests): the packet's time, written by the loader
 * before each test run, so that gaps are the capture's, not the test's. */
BPF_ARRAY(nn_flow_clock, __u64, 1);

static __always_inline struct nn_flow *flow_lookup(struct nn_flow_key *key)
{
	return nn_flows.lookup(key);
}

static __always_inline void flow_insert(struct nn_flow_key *key, struct nn_flow *value)
{
	nn_flows.update(key, value);
}

static __always_inline __u64 flow_now(void)
{
#ifdef NN_FLOW_REPLAY_CLOCK
	__u32 zero = 0;
	__u64 *t = nn_flow_clock.lookup(&zero);
	return t ? *t : 0;
#else
	return bpf_ktime_get_ns();
#endif
}
#endif

#ifdef NN_RECORD_INPUT
/* Debug builds only (predict, tests): the last input the model saw. */
struct nn_last_input {
	__u64 words[NN_MAX_WORDS];
	__u32 cls;
	__u32 result;
};
BPF_PERCPU_ARRAY(nn_last, struct nn_last_input, 1);
#endif

static __always_inline int forward(struct xdp_md *ctx, const struct nn_config *cfg)
{
#ifdef NN_REFLECT
	return XDP_TX; /* veth delivers by device, so no MAC swap is needed */
#endif
	__u32 out = ctx->ingress_ifindex == cfg->ifindex[0] ? 1 : 0;
	/* An empty slot (no peer) falls back to XDP_PASS. */
	return nn_tx_port.redirect_map(out, XDP_PASS);
}

#ifdef NN_SERVE
/* Replies to the request in s (or drops it), counted under its model id. */
static __always_inline int answer(struct xdp_md *ctx, struct nn_scratch *s)
{
	__u32 key = s->req.counters;
	struct nn_serve_counters *sc = nn_serve.lookup(&key);
	if (!sc)
		return XDP_DROP; /* cannot happen: serve_parse keeps it <= NN_SRV_MODELS */
	return serve_reply(ctx, &s->req, s->scores, sc);
}

/* Answers the request in s with class cls, and its scores when asked:
 * recomputed from h, the last hidden layer's activations (bnn_output's
 * own, never kept). */
static __always_inline int answer_class(struct xdp_md *ctx, struct nn_scratch *s,
					const __u64 *m, const __u64 *h, __u32 cls)
{
	s->req.cls = cls;
	if (s->req.hdr.flags & NN_SRV_F_SCORES) {
#pragma clang loop unroll(disable)
		for (int j = 0; j < NN_CLASSES; j++)
			s->scores[j] = __builtin_bswap64(bnn_score(m, h, j));
	}
	return answer(ctx, s);
}
#endif

static __always_inline int verdict(struct nn_counters *c, int v)
{
	NN_COUNT(c->verdict, v, NN_VERDICT__COUNT, 7);
	return v;
}

/* The class's action (nn_config.action), counted. */
static __always_inline int act(struct xdp_md *ctx, const struct nn_config *cfg,
			       struct nn_counters *c, __u32 cls)
{
	switch (cfg->action[cls]) {
	case NN_ACT_PASS:
		return verdict(c, XDP_PASS);
	case NN_ACT_DROP:
		return verdict(c, XDP_DROP);
	case NN_ACT_REDIRECT:
		/* A target that is gone (the kernel empties its slot) leaves the
		 * packet on the default path, like a class that is only counted. */
		if (nn_tx_port.redirect_map(cfg->tx_slot[cls], 0) == XDP_REDIRECT)
			return verdict(c, XDP_REDIRECT);
		return verdict(c, forward(ctx, cfg));
	case NN_ACT_COUNT:
	default:
		return verdict(c, forward(ctx, cfg));
	}
}

#ifdef NN_STAGE
/* This stage's layers on the activations in s->a, then the next stage (by
 * tail call) or, in the last, the class's action. */
static __always_inline int stage_run(struct xdp_md *ctx, const struct nn_config *cfg,
				     struct nn_counters *c, struct nn_scratch *s)
{
	__u32 zero = 0;
	void *inner = nn_model.lookup(&zero);
	struct nn_model_words *model = inner ? bpf_map_lookup_elem(inner, &zero) : NULL;
	if (!model)
		return verdict(c, forward(ctx, cfg));
	__u64 *out, *done;
	__u32 cls = stage_layers(model->w, s->a, s->b, &out, &done) & (NN_MAX_CLASSES - 1);
#if NN_STAGE_LAST
	c->class_packets[cls]++;
#ifdef NN_SERVE
	/* A request is answered whatever its class's action, with the
	 * fields stage 0 saved. */
	struct nn_req *req = nn_stage_req.lookup(&zero);
	if (!req)
		return verdict(c, XDP_DROP); /* cannot happen: array entries exist */
	__builtin_memcpy(&s->req, req, sizeof(s->req));
	return verdict(c, answer_class(ctx, s, model->w, out, cls));
#endif
	return act(ctx, cfg, c, cls);
#else
	__u32 slot = (NN_STAGE + 1) % NN_STAGE_SLOTS;
	struct nn_stage_act *next = nn_stage.lookup(&slot);
	if (!next)
		return verdict(c, forward(ctx, cfg)); /* cannot happen: array entries exist */
	stage_write(next, out, done);
#if NN_STAGE_CARRY
	int lost = stage_put(ctx, next);
	if (lost >= 0) {
		stage_count(lost);
		return verdict(c, forward(ctx, cfg));
	}
#endif
#if NN_STAGE_HOP
	/* Out of the peer, to the next hop: counted here as redirected (each
	 * hop has counters of its own); a frame that carries activations has
	 * no default path. */
	int v = nn_tx_port.redirect_map(1, XDP_DROP);
	if (v != XDP_REDIRECT)
		stage_count(NN_STAGE_NO_NEXT);
	return verdict(c, v);
#elif NN_STAGE_NEXT_CPU >= 0
	/* The verdict is the last stage's to count; a frame that carries
	 * activations has no default path. */
	int v = nn_cpus.redirect_map(NN_STAGE_NEXT_CPU, XDP_DROP);
	if (v == XDP_REDIRECT)
		return v;
	stage_count(NN_STAGE_NO_NEXT);
	return verdict(c, v);
#else
	nn_next.call(ctx, 0); /* BCC: bpf_tail_call(); returns only if the slot is empty */
	stage_count(NN_STAGE_NO_NEXT);
#if NN_STAGE_CARRY
	return verdict(c, XDP_DROP); /* it carries activations: not the frame that came */
#else
	return verdict(c, forward(ctx, cfg));
#endif
#endif
#endif
}
#endif

int xdpnn(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct nn_config *cfg = nn_config.lookup(&zero);
	if (!cfg)
		return XDP_PASS; /* cannot happen: array entries always exist */
	/* Side 1: arrived on the peer; ifindex[1] is 0 without one, which no
	 * interface has. */
	__u32 side = ctx->ingress_ifindex == cfg->ifindex[1] ? 1 : 0;
	struct nn_counters *c = nn_counters.lookup(&side);
	struct nn_scratch *s = nn_scratch.lookup(&zero);
	if (!c || !s)
		return XDP_PASS;
#ifdef NN_FORWARD_ONLY
	return verdict(c, forward(ctx, cfg));
#endif
#if defined(NN_STAGE) && NN_STAGE_HOP
	/* A chain of hops runs from IFACE to the peer: frames the other way
	 * (replies) take the default path, back towards IFACE, untouched. */
	if (side == 1)
		return verdict(c, forward(ctx, cfg));
#endif
#if NN_MODEL_ID == 0 && !defined(NN_SERVE) && !NN_STAGE_TAKES
	if (cfg->port_models) {
		/* A packet to a port with a model of its own goes to that
		 * model's program; an empty slot returns here, and the attached
		 * model takes the packet. */
		__u32 port = l4_dst_port((void *)(long)ctx->data, (void *)(long)ctx->data_end);
		__u32 *id = nn_port_models.lookup(&port);
		if (id && *id)
			nn_progs.call(ctx, *id); /* BCC: bpf_tail_call() */
	}
#endif
#if NN_STAGE_TAKES
#if NN_STAGE_HOP
	/* Only frames of the hops' EtherType carry activations; the others
	 * are not this chain's: counted as "other", default path. */
	if (!stage_hop_frame(ctx)) {
		c->input[NN_IN_OTHER]++;
		return verdict(c, forward(ctx, cfg));
	}
#endif
	/* Activations from the stage before, or a reason to refuse them. */
	__u32 slot = NN_STAGE % NN_STAGE_SLOTS;
	struct nn_stage_act *got = nn_stage.lookup(&slot);
#if NN_STAGE_CARRY
	/* The packet's activations, through this CPU's entry. */
	int refused = got ? stage_take(ctx, got) : NN_STAGE_BAD_DIGEST;
	if (refused < 0 && got)
		refused = stage_read(got, s->a, s->b);
#else
	int refused = got ? stage_read(got, s->a, s->b) : NN_STAGE_BAD_DIGEST;
#endif
#if NN_STAGE_HOP
	/* A hop has counters of its own: every frame gets an input result, as
	 * at stage 0 (the reason of a refusal is in nn_stage_err). */
	c->input[refused < 0 ? NN_IN_CLASSIFIED :
		 refused == NN_STAGE_TRUNCATED ? NN_IN_TRUNCATED : NN_IN_MALFORMED]++;
#endif
	if (refused >= 0) {
		stage_count(refused);
		return verdict(c, XDP_DROP);
	}
	return stage_run(ctx, cfg, c, s);
#else

	/* s->a holds the input, then alternates with s->b as layers run. */
#ifdef NN_SERVE
	int r = serve_parse(ctx, cfg, s->a, &s->req);
#if NN_MODEL_ID == 0
	/* A request to another model id goes to that model's program, which
	 * parses it again and answers it.  An empty slot (or an id past the
	 * array: req.counters is then NN_SRV_MODELS) returns here, and the
	 * request gets the unknown_model reply. */
	if (r == NN_IN_REQUEST_ERROR && s->req.status == NN_SRV_UNKNOWN_MODEL)
		nn_progs.call(ctx, s->req.counters); /* BCC: bpf_tail_call() */
#endif
#elif NN_INPUT_MODE == NN_INPUT_FLOW
	struct nn_flow *flow = NULL;
	int r = flow_input(ctx, c, s->a, &flow);
#else
	int r = extract_input(ctx, cfg, s->a, s->record);
#endif
#ifdef NN_RECORD_INPUT
	struct nn_last_input *last = nn_last.lookup(&zero);
	if (last) {
		__builtin_memcpy(last->words, s->a, sizeof(s->a));
		last->result = r;
		last->cls = NN_MAX_CLASSES;
	}
#endif
	if (r != NN_IN_CLASSIFIED) {
		if (r > 0 && r < NN_IN__COUNT)
			c->input[r]++;
#ifdef NN_SERVE
		if (r == NN_IN_REQUEST_ERROR)
			return verdict(c, answer(ctx, s));
#endif
		return verdict(c, forward(ctx, cfg));
	}
	c->input[NN_IN_CLASSIFIED]++;
#ifdef NN_STAGE
#ifdef NN_SERVE
	struct nn_req *req = nn_stage_req.lookup(&zero);
	if (!req)
		return verdict(c, XDP_DROP); /* cannot happen: array entries exist */
	__builtin_memcpy(req, &s->req, sizeof(s->req)); /* for the last stage's reply */
#endif
	return stage_run(ctx, cfg, c, s);
#else
	__u32 cls;
#if NN_INPUT_MODE == NN_INPUT_FLOW
	if (!flow)
		return verdict(c, forward(ctx, cfg)); /* cannot happen: flow_input sets it */
	if (flow_cached(c, flow, &cls))
		goto classified;
#endif

	void *inner = nn_model.lookup(&zero);
	struct nn_model_words *model = inner ? bpf_map_lookup_elem(inner, &zero) : NULL;
	if (!model)
		return verdict(c, forward(ctx, cfg));
	const __u64 *m = model->w;
	cls = bnn_infer(m, s->a, s->b) & (NN_MAX_CLASSES - 1);
#if NN_INPUT_MODE == NN_INPUT_FLOW
	flow_classified(c, flow, cls);
classified:
#endif
	c->class_packets[cls]++;
#ifdef NN_RECORD_INPUT
	if (last)
		last->cls = cls;
#endif
#ifdef NN_SERVE
	/* A request is answered whatever its class's action.  bnn_infer leaves
	 * the last hidden layer in b after an odd number of layers, else in a. */
	return verdict(c, answer_class(ctx, s, m, NN_HIDDEN % 2 ? s->b : s->a, cls));
#endif

	return act(ctx, cfg, c, cls);
#endif /* NN_STAGE */
#endif /* NN_STAGE_TAKES */
}
