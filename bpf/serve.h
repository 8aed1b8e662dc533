/* Serving (attach --serve): requests answered from XDP.  A request is a UDP
 * datagram to the port, over IPv4 or IPv6, whose payload is a header
 * (xdpnn_shared.h, NN_SRV_*) and the input bits; the program writes the
 * reply over it and returns XDP_TX.  The protocol and what happens to each
 * malformed case: docs/serving.md; the Python twin: trainer/serve.py.
 *
 * The reply is a new frame built at fixed offsets from fields saved before
 * the inference (struct nn_req), not an edit of the request: IPv4 options
 * and extra payload bytes are not carried over, every write has a constant
 * offset, and no packet pointer stays live across the inference. */
#ifndef XDPNN_SERVE_H
#define XDPNN_SERVE_H

#include <linux/ipv6.h>

struct nn_srv_hdr {
	__be16 magic;
	__u8 version;
	__u8 flags;
	__be16 model;
	__be16 length;
	__be64 id;
};

struct nn_srv_body {
	__u8 status;
	__u8 cls;
	__be16 n_scores;
};

_Static_assert(sizeof(struct nn_srv_hdr) == NN_SRV_HDR_BYTES &&
	       __builtin_offsetof(struct nn_srv_hdr, version) == NN_SRV_OFF_VERSION &&
	       __builtin_offsetof(struct nn_srv_hdr, flags) == NN_SRV_OFF_FLAGS &&
	       __builtin_offsetof(struct nn_srv_hdr, model) == NN_SRV_OFF_MODEL &&
	       __builtin_offsetof(struct nn_srv_hdr, length) == NN_SRV_OFF_LENGTH &&
	       __builtin_offsetof(struct nn_srv_hdr, id) == NN_SRV_OFF_ID &&
	       NN_SRV_OFF_MAGIC == 0 && NN_SRV_OFF_STATUS == NN_SRV_HDR_BYTES &&
	       NN_SRV_OFF_CLASS == NN_SRV_OFF_STATUS + 1 &&
	       NN_SRV_OFF_NSCORES == NN_SRV_OFF_STATUS + 2 &&
	       NN_SRV_OFF_SCORES == NN_SRV_HDR_BYTES + sizeof(struct nn_srv_body),
	       "the NN_SRV_OFF_* of xdpnn_shared.h must describe these structs");
_Static_assert(NN_SRV__COUNT <= 8, "NN_COUNT's mask for status is 7");
/* bpf_csum_diff sums at most 512 bytes per call. */
_Static_assert(8 * NN_MAX_CLASSES <= 512, "scores are checksummed in one call");

/* What the reply needs of a request.  Kept in map memory (nn_scratch),
 * whose contents the verifier does not track: the IPv4 and IPv6 paths then
 * reach the inference in the same state, and it is verified once. */
struct nn_req {
	__u8 mac[12];         /* destination, source, as received */
	__u8 addr[32];        /* source, destination: 4 + 4 bytes, or 16 + 16 for IPv6 */
	__be32 ip6_flow;      /* IPv6: version, traffic class, flow label */
	__be16 ip_id;         /* IPv4 */
	__u8 tos;             /* IPv4 */
	__u8 ip6;             /* 0: IPv4, 1: IPv6 */
	__be16 sport, dport;
	__u32 status;         /* enum nn_srv_status */
	__u32 counters;       /* nn_serve entry: the model id, or NN_SRV_MODELS */
	__u32 cls;
	struct nn_srv_hdr hdr;
};

/* IPv6 up to the L4 header, for UDP only: extension headers and other
 * protocols are not requests. */
static __always_inline int parse_ipv6(void *data, void *data_end, struct ipv6hdr **out)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end)
		return NN_IN_TRUNCATED;
	if (ip6->version != 6)
		return NN_IN_MALFORMED;
	if (ip6->nexthdr != IPPROTO_UDP)
		return NN_IN_IPV6;
	__u32 plen = bpf_ntohs(ip6->payload_len);
	BOUND16(plen);
	if ((void *)(ip6 + 1) + plen > data_end)
		return NN_IN_TRUNCATED;
	*out = ip6;
	return NN_IN_CLASSIFIED;
}

/* A request's input bits (into x) and the fields of its reply (into req).
 * NN_IN_CLASSIFIED: a valid request; NN_IN_REQUEST_ERROR: a request with an
 * error status in req->status; anything else: not a request (default path). */
static __always_inline int serve_parse(struct xdp_md *ctx, const struct nn_config *cfg,
				       __u64 *x, struct nn_req *req)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l4;
	__u32 l4_len;
	struct l3 l3;
	req->counters = NN_SRV_MODELS;
	int r = parse_ipv4(data, data_end, &l3);
	if (r == NN_IN_CLASSIFIED) {
		if (l3.ip->protocol != IPPROTO_UDP)
			return NN_IN_OTHER;
		l4 = l3.l4;
		l4_len = l3.l4_len;
	} else if (r == NN_IN_IPV6) {
		struct ipv6hdr *ip6;
		r = parse_ipv6(data, data_end, &ip6);
		if (r != NN_IN_CLASSIFIED)
			return r;
		l4 = ip6 + 1;
		l4_len = bpf_ntohs(ip6->payload_len);
	} else {
		return r;
	}
	__u8 *p;
	__u32 len;
	r = udp_to_port(l4, l4_len, data_end, cfg, &p, &len);
	if (r != NN_IN_CLASSIFIED)
		return r;

	/* A request: saved for the reply.  The checks repeat what the parsers
	 * proved, for the verifier (the pointers went through other registers). */
	struct ethhdr *eth = data;
	struct udphdr *udp = l4;
	if ((void *)(eth + 1) > data_end || (void *)(udp + 1) > data_end)
		return NN_IN_TRUNCATED;
	__builtin_memcpy(req->mac, eth, 12);
	req->sport = udp->source;
	req->dport = udp->dest;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return NN_IN_TRUNCATED;
		req->ip6 = 0;
		req->tos = ip->tos;
		req->ip_id = ip->id;
		__builtin_memcpy(req->addr, &ip->saddr, 8);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return NN_IN_TRUNCATED;
		req->ip6 = 1;
		__builtin_memcpy(&req->ip6_flow, ip6, 4);
		__builtin_memcpy(req->addr, &ip6->saddr, 32);
	}

	struct nn_srv_hdr *h = (void *)p;
	if (len < NN_SRV_HDR_BYTES || (void *)(h + 1) > data_end) {
		req->status = NN_SRV_SHORT_HEADER;
		return NN_IN_REQUEST_ERROR;
	}
	__builtin_memcpy(&req->hdr, h, sizeof(*h));
	if (h->magic != bpf_htons(NN_SRV_MAGIC)) {
		req->status = NN_SRV_BAD_MAGIC;
	} else if (h->version != NN_SRV_VERSION) {
		req->status = NN_SRV_BAD_VERSION;
	} else if (h->flags & NN_SRV_F_REPLY) {
		req->status = NN_SRV_NOT_REQUEST;
	} else {
		__u32 model = bpf_ntohs(h->model);
		req->counters = model < NN_SRV_MODELS ? model : NN_SRV_MODELS;
		__u32 in_len = bpf_ntohs(h->length);
		__u8 *in = (void *)(h + 1);
		if (model != NN_MODEL_ID) /* each program serves one id (xdpnn.c) */
			req->status = NN_SRV_UNKNOWN_MODEL;
		else if (in_len < NN_IN_BYTES || len - NN_SRV_HDR_BYTES < in_len ||
			 (void *)in + NN_IN_BYTES > data_end)
			req->status = NN_SRV_SHORT_INPUT;
		else {
			load_input(in, x);
			req->status = NN_SRV_OK;
			return NN_IN_CLASSIFIED;
		}
	}
	return NN_IN_REQUEST_ERROR;
}

/* sum: a bpf_csum_diff result, which is 32 bits wide: 6.1 returns them
 * unfolded, and BCC declares the helper to return an int, so a sum held in
 * a wider signed type would be sign-extended, and lose a carry here. */
static __always_inline __u16 nn_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Writes the reply of n_scores scores (0 or NN_CLASSES, a constant) over
 * the frame, which the caller has sized to it.  Sums are of bytes as they
 * lie in memory, so the folded sum is stored without swapping (RFC 1071). */
static __always_inline int serve_write(struct xdp_md *ctx, const struct nn_req *req,
				       const __u64 *scores_be, const int n_scores)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const __u32 body = NN_SRV_OFF_SCORES + 8 * n_scores; /* the UDP payload */
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 sum;
	if (!req->ip6) {
		struct iphdr *ip = (void *)(eth + 1);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) + body > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = req->tos;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + body);
		ip->id = req->ip_id;
		ip->frag_off = 0;
		ip->ttl = NN_SRV_TTL;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		__builtin_memcpy(&ip->saddr, req->addr + 4, 4);
		__builtin_memcpy(&ip->daddr, req->addr, 4);
		ip->check = nn_csum_fold(bpf_csum_diff(0, 0, (void *)ip, sizeof(*ip), 0));
		sum = bpf_csum_diff(0, 0, (void *)&ip->saddr, 8, 0);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) + body > data_end)
			return XDP_DROP;
		__builtin_memcpy(ip6, &req->ip6_flow, 4);
		ip6->payload_len = bpf_htons(sizeof(*udp) + body);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = NN_SRV_TTL;
		__builtin_memcpy(&ip6->saddr, req->addr + 16, 16);
		__builtin_memcpy(&ip6->daddr, req->addr, 16);
		sum = bpf_csum_diff(0, 0, (void *)&ip6->saddr, 32, 0);
	}
	__builtin_memcpy(eth->h_dest, req->mac + 6, 6);
	__builtin_memcpy(eth->h_source, req->mac, 6);

	udp->source = req->dport;
	udp->dest = req->sport;
	udp->len = bpf_htons(sizeof(*udp) + body);
	udp->check = 0;
	struct nn_srv_hdr *h = (void *)(udp + 1);
	*h = req->hdr;
	h->magic = bpf_htons(NN_SRV_MAGIC);
	h->version = NN_SRV_VERSION;
	h->flags = (req->hdr.flags & NN_SRV_F_SCORES) | NN_SRV_F_REPLY;
	h->length = bpf_htons(body - NN_SRV_HDR_BYTES);
	struct nn_srv_body *b = (void *)(h + 1);
	b->status = req->status;
	b->cls = req->status == NN_SRV_OK ? req->cls : NN_SRV_NO_CLASS;
	b->n_scores = bpf_htons(n_scores);
	__u64 *out = (void *)(b + 1);
#pragma unroll
	for (int j = 0; j < n_scores; j++)
		out[j] = scores_be[j];

	/* The pseudo-header's protocol and UDP length weigh the same in IPv4
	 * (zero, protocol, length) and IPv6 (length, zeros, next header). */
	__u8 pseudo[4] = {0, IPPROTO_UDP};
	__builtin_memcpy(&pseudo[2], &udp->len, 2);
	sum = bpf_csum_diff(0, 0, (void *)pseudo, sizeof(pseudo), sum);
	sum = bpf_csum_diff(0, 0, (void *)udp, sizeof(*udp) + NN_SRV_OFF_SCORES, sum);
	if (n_scores)
		sum = bpf_csum_diff(0, 0, (void *)out, 8 * n_scores, sum);
	__u16 check = nn_csum_fold(sum);
	udp->check = check ? check : 0xffff; /* 0 would mean "no checksum" */
	return XDP_TX;
}

/* Answers a request (req->status says how) or drops it; counts it. */
static __always_inline int serve_reply(struct xdp_md *ctx, const struct nn_req *req,
				       const __u64 *scores_be, struct nn_serve_counters *sc)
{
	__u32 status = req->status;
	sc->requests++;
	if (status == NN_SRV_SHORT_HEADER || status == NN_SRV_NOT_REQUEST) {
		NN_COUNT(sc->status, status, NN_SRV__COUNT, 7);
		return XDP_DROP;
	}
	int scores = status == NN_SRV_OK && (req->hdr.flags & NN_SRV_F_SCORES);
	int l3 = req->ip6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	int want = sizeof(struct ethhdr) + l3 + sizeof(struct udphdr) + NN_SRV_OFF_SCORES +
		   (scores ? 8 * NN_CLASSES : 0);
	int have = bpf_xdp_get_buff_len(ctx); /* the verifier refuses data_end - data */
	int v = XDP_DROP;
	if (bpf_xdp_adjust_tail(ctx, want - have) == 0)
		v = scores ? serve_write(ctx, req, scores_be, NN_CLASSES)
			   : serve_write(ctx, req, scores_be, 0);
	if (v != XDP_TX) {
		sc->status[NN_SRV_NO_ROOM]++;
		return XDP_DROP;
	}
	NN_COUNT(sc->status, status, NN_SRV__COUNT, 7);
	sc->replies++;
	return XDP_TX;
}

#endif
