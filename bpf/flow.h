/* Flow mode: one record per flow, built from its first packets, and the
 * flow's class cached once final.  Mirrored bit for bit by
 * trainer/flows.py; the record's layout is in docs/datapath.md ("Flow
 * mode"):
 *
 *   0      IP protocol
 *   1-2    responder port (destination port of the flow's first packet)
 *   3      TCP flags of the first NN_FLOW_PACKETS packets, OR-ed
 *   4-11   packet i: 0x80 | 0x40 if from the responder | min(63, payload >> 5)
 *   12-15  packet i's gap to packet i-1, a nibble each (i = 0: 0), high first
 *   16-23  the initiator's first payload bytes (its first packet with payload)
 *   24-31  the responder's first payload bytes
 *
 * A flow is both directions of (protocol, address, port, address, port);
 * ICMP and other protocols without ports use port 0.  Included by xdpnn.c
 * after parse.h when NN_INPUT_MODE is NN_INPUT_FLOW. */
#ifndef XDPNN_FLOW_H
#define XDPNN_FLOW_H

#ifdef NN_SERVE
#error "serving (NN_SERVE) takes payload-mode models, not flow mode"
#endif
#if NN_FEATURE_BYTES != 32 || NN_FLOW_PACKETS != 8 || NN_FLOW_PAYLOAD != 8
#error "the flow record's layout above is written for 32 bytes, 8 packets and 8 payload bytes"
#endif

/* Entries of the flow table; tests build small tables to fill them. */
#ifndef NN_FLOW_ENTRIES
#define NN_FLOW_ENTRIES 65536
#endif

#define TCP_FIN_ 0x01
#define TCP_RST_ 0x04

struct nn_flow_key {
	__u32 addr[2]; /* the lower (address, port) end first */
	__u16 port[2];
	__u32 proto;
};

struct nn_flow {
	__u64 record[NN_FEATURE_BYTES / 8];
	__u64 last_ns;      /* time of the flow's latest packet */
	__u32 init_addr;    /* the initiator: sender of the flow's first packet */
	__u16 init_port;
	__u8 packets;       /* recorded so far, up to NN_FLOW_PACKETS */
	__u8 cls;           /* latest class, NN_FLOW_NO_CLASS before the first */
	__u8 state;         /* enum flow_state */
	__u8 payload_seen;  /* bit 0: the initiator's payload is in the record, bit 1: the responder's */
	__u8 pad[6];
};

enum flow_state {
	FLOW_OPEN = 0,    /* classified again at each packet, on the record so far */
	FLOW_DECIDING,    /* this packet's class is the flow's final one */
	FLOW_FINAL,       /* later packets take cls without inference */
};

/* The flow table and the replay clock are declared in xdpnn.c, where BCC
 * rewrites map calls (it rewrites the main file only), behind these: */
static __always_inline struct nn_flow *flow_lookup(struct nn_flow_key *key);
static __always_inline void flow_insert(struct nn_flow_key *key, struct nn_flow *value);
static __always_inline __u64 flow_now(void);

/* The gap's nibble: how many of 2^14, 2^15, ..., 2^28 ns (16 us .. 268 ms)
 * it reaches.  A fixed compare per step: no loop state for the verifier. */
static __always_inline __u8 gap_bucket(__u64 gap)
{
	__u8 g = 0;
#pragma unroll
	for (int k = 0; k < 15; k++)
		g += gap >= (1ULL << (k + 14));
	return g;
}

/* Up to NN_FLOW_PAYLOAD payload bytes into b[at..]: byte by byte, each
 * checked against the frame's end and the payload's length. */
static __always_inline void copy_payload(__u8 *b, int at, __u8 *p, __u32 len, void *data_end)
{
#pragma unroll
	for (int i = 0; i < NN_FLOW_PAYLOAD; i++) {
		if (i >= len || (void *)(p + i + 1) > data_end)
			return;
		b[at + i] = p[i];
	}
}

/* The flow's record into x, with *out the flow's entry; or the reason the
 * packet has none.  Adds this packet to the record if it is one of the
 * first NN_FLOW_PACKETS. */
static __always_inline int flow_input(struct xdp_md *ctx, struct nn_counters *c, __u64 *x,
				      struct nn_flow **out)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct l3 l3;
	int r = parse_ipv4((void *)(long)ctx->data, data_end, &l3);
	if (r != NN_IN_CLASSIFIED)
		return r;
	struct iphdr *ip = l3.ip;
	__u8 *l4 = l3.l4;
	__u32 l4_hdr = 0;
	__u16 sport = 0, dport = 0;
	__u8 flags = 0;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)l4;
		int t = check_tcp(&l3, data_end, &l4_hdr);
		if (t != NN_IN_CLASSIFIED)
			return t;
		flags = ((__u8 *)tcp)[13];
		sport = bpf_ntohs(tcp->source);
		dport = bpf_ntohs(tcp->dest);
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)l4;
		if ((void *)(udp + 1) > data_end || l3.l4_len < sizeof(*udp))
			return NN_IN_TRUNCATED;
		l4_hdr = sizeof(*udp);
		sport = bpf_ntohs(udp->source);
		dport = bpf_ntohs(udp->dest);
	}
	__u32 plen = l3.l4_len - l4_hdr;
	__u32 saddr = bpf_ntohl(ip->saddr), daddr = bpf_ntohl(ip->daddr);

	struct nn_flow_key key = {};
	key.proto = ip->protocol;
	if (saddr < daddr || (saddr == daddr && sport <= dport)) {
		key.addr[0] = saddr; key.port[0] = sport;
		key.addr[1] = daddr; key.port[1] = dport;
	} else {
		key.addr[0] = daddr; key.port[0] = dport;
		key.addr[1] = saddr; key.port[1] = sport;
	}
	__u64 now = flow_now();
	struct nn_flow *f = flow_lookup(&key);
	if (!f) {
		struct nn_flow fresh = {};
		fresh.init_addr = saddr;
		fresh.init_port = sport;
		fresh.cls = NN_FLOW_NO_CLASS;
		fresh.last_ns = now;
		__u8 *fb = (__u8 *)fresh.record;
		fb[0] = ip->protocol;
		fb[1] = dport >> 8;
		fb[2] = dport & 0xff;
		flow_insert(&key, &fresh);
		f = flow_lookup(&key);
		if (!f)
			return NN_IN_OTHER; /* cannot happen: an LRU table makes room */
		c->flow[NN_FLOW_NEW]++;
	} else if (now - f->last_ns > NN_FLOW_TIMEOUT_MS * 1000000ULL) {
		/* Idle too long: the same 5-tuple is a new conversation. */
		if (f->cls != NN_FLOW_NO_CLASS)
			c->class_flows[f->cls & (NN_MAX_CLASSES - 1)]--;
#pragma unroll
		for (int k = 0; k < NN_FEATURE_BYTES / 8; k++)
			f->record[k] = 0;
		__u8 *fb = (__u8 *)f->record;
		fb[0] = ip->protocol;
		fb[1] = dport >> 8;
		fb[2] = dport & 0xff;
		f->init_addr = saddr;
		f->init_port = sport;
		f->packets = 0;
		f->cls = NN_FLOW_NO_CLASS;
		f->state = FLOW_OPEN;
		f->payload_seen = 0;
		f->last_ns = now;
		c->flow[NN_FLOW_EXPIRED]++;
	}
	__u64 gap = now - f->last_ns;
	f->last_ns = now;
	*out = f;

	if (f->state != FLOW_FINAL && f->packets < NN_FLOW_PACKETS) {
		__u8 *b = (__u8 *)f->record;
		__u32 i = f->packets & (NN_FLOW_PACKETS - 1);
		__u8 responder = !(saddr == f->init_addr && sport == f->init_port);
		__u32 size = plen >> 5;
		b[4 + i] = 0x80 | (responder << 6) | (size > 63 ? 63 : size);
		if (i > 0) {
			__u8 g = gap_bucket(gap);
			b[12 + (i >> 1)] |= i & 1 ? g : g << 4;
		}
		b[3] |= flags;
		if (plen > 0 && !(f->payload_seen & (1 << responder))) {
			f->payload_seen |= 1 << responder;
			copy_payload(b, responder ? 24 : 16, l4 + (l4_hdr & 0x3f), plen, data_end);
		}
		f->packets = i + 1;
		if (i + 1 == NN_FLOW_PACKETS || (flags & (TCP_FIN_ | TCP_RST_)))
			f->state = FLOW_DECIDING;
	}
#pragma unroll
	for (int k = 0; k < NN_IN_WORDS; k++)
		x[k] = f->record[k];
	x[NN_IN_WORDS - 1] &= NN_IN_TAIL_MASK;
	return NN_IN_CLASSIFIED;
}

/* A final flow's class, without inference: 1 and *cls; else 0. */
static __always_inline int flow_cached(struct nn_counters *c, struct nn_flow *f, __u32 *cls)
{
	if (f->state != FLOW_FINAL)
		return 0;
	*cls = f->cls & (NN_MAX_CLASSES - 1);
	c->flow[NN_FLOW_CACHED]++;
	return 1;
}

/* The class inference gave this packet becomes the flow's (final if the
 * flow was deciding); flows per class follow it. */
static __always_inline void flow_classified(struct nn_counters *c, struct nn_flow *f, __u32 cls)
{
	if (f->cls != cls) {
		if (f->cls != NN_FLOW_NO_CLASS)
			c->class_flows[f->cls & (NN_MAX_CLASSES - 1)]--;
		c->class_flows[cls & (NN_MAX_CLASSES - 1)]++;
		f->cls = cls;
	}
	if (f->state == FLOW_DECIDING) {
		f->state = FLOW_FINAL;
		c->flow[NN_FLOW_FINAL]++;
	}
}

#endif
