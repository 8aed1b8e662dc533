/* Packet parsing: from a frame to the model's input words, or to the reason
 * it has none.  Every read is preceded by a check against data_end, and the
 * policy (docs/datapath.md, "Packets that are not classified") is mirrored
 * bit for bit by trainer/features.py. */
#ifndef XDPNN_PARSE_H
#define XDPNN_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>

/* x &= 0xffff where clang cannot drop it: verifiers before 6.x track no
 * range for a byte-swapped value (bpf_ntohs), and then refuse adding it to
 * a packet pointer; the mask restores the range. */
#define BOUND16(x) asm volatile("%0 &= 0xffff" : "+r"(x))

/* counters[idx]++ if idx < n; mask (a literal, 2^k - 1 >= n - 1) keeps the
 * index in the array for the verifier.  In assembly, so that the register
 * that indexes is the one bounded: clang may compare one copy of idx and
 * index with another, which the verifier then finds unbounded. */
#define NN_COUNT(counters, idx, n, mask)                         \
	do {                                                     \
		__u64 i_ = (__u32)(idx);                         \
		if (i_ < (n)) {                                  \
			asm volatile("%0 &= " #mask : "+r"(i_)); \
			(counters)[i_]++;                        \
		}                                                \
	} while (0)

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

struct l3 {
	struct iphdr *ip;
	void *l4;            /* first byte after the IPv4 header */
	__u32 l4_len;        /* bytes of L4 (header + payload) per tot_len */
};

/* Ethernet + IPv4 up to the L4 header.  Returns NN_IN_CLASSIFIED when the
 * frame holds a complete, unfragmented IPv4 header, else the reason. */
static __always_inline int parse_ipv4(void *data, void *data_end, struct l3 *out)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return NN_IN_TRUNCATED;
	__u16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_))
		return NN_IN_VLAN;
	if (proto == bpf_htons(ETH_P_IPV6))
		return NN_IN_IPV6;
	if (proto != bpf_htons(ETH_P_IP))
		return NN_IN_NON_IP;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return NN_IN_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return NN_IN_MALFORMED;
	__u32 ihl = ip->ihl * 4;
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	BOUND16(tot_len);
	if (tot_len < ihl)
		return NN_IN_MALFORMED;
	/* tot_len may be shorter than the frame (Ethernet padding), never longer. */
	if ((void *)ip + tot_len > data_end)
		return NN_IN_TRUNCATED;
	if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return NN_IN_FRAGMENT;
	out->ip = ip;
	out->l4 = (void *)ip + ihl;
	out->l4_len = tot_len - ihl;
	return NN_IN_CLASSIFIED;
}

/* The TCP or UDP destination port of an IPv4 frame; 0 for any other frame
 * (what parse_ipv4 refuses included), and port 0 never has a model. */
static __always_inline __u32 l4_dst_port(void *data, void *data_end)
{
	struct l3 l3;
	if (parse_ipv4(data, data_end, &l3) != NN_IN_CLASSIFIED)
		return 0;
	if (l3.ip->protocol != IPPROTO_TCP && l3.ip->protocol != IPPROTO_UDP)
		return 0;
	__be16 *ports = l3.l4; /* source, destination: the same place in both */
	if ((void *)(ports + 2) > data_end || l3.l4_len < 4)
		return 0;
	return bpf_ntohs(ports[1]);
}

/* A UDP datagram to cfg->udp_port, from its L4 bytes (l4_len of them per
 * the IP header): its payload and payload length, or why it is not one. */
static __always_inline int udp_to_port(void *l4, __u32 l4_len, void *data_end,
				       const struct nn_config *cfg, __u8 **payload, __u32 *len)
{
	struct udphdr *udp = l4;
	if ((void *)(udp + 1) > data_end || l4_len < sizeof(*udp))
		return NN_IN_TRUNCATED;
	if (udp->dest != bpf_htons(cfg->udp_port))
		return NN_IN_OTHER;
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || udp_len > l4_len)
		return NN_IN_MALFORMED;
	*payload = (void *)(udp + 1);
	*len = udp_len - sizeof(*udp);
	return NN_IN_CLASSIFIED;
}

/* The model's input bits from p, bit 0 = the MSB of the first byte; the
 * caller has checked that p + NN_IN_BYTES is inside the frame. */
static __always_inline void load_input(const __u8 *p, __u64 *x)
{
	/* Whole words load as they are: the weights are packed in the same byte
	 * order (docs/model-format.md), so no byte swapping is needed. */
#pragma unroll
	for (int k = 0; k < NN_IN_WORDS - 1; k++)
		x[k] = *(__u64 *)(p + 8 * k);
	x[NN_IN_WORDS - 1] = 0;
	__builtin_memcpy(&x[NN_IN_WORDS - 1], p + 8 * (NN_IN_WORDS - 1),
			 NN_IN_BYTES - 8 * (NN_IN_WORDS - 1));
	x[NN_IN_WORDS - 1] &= NN_IN_TAIL_MASK;
}

/* The TCP header at l3->l4: NN_IN_CLASSIFIED with its length (options
 * included) in *hdr_len, or why it cannot be read.  Headers and flow mode
 * both take the TCP fields from it. */
static __always_inline int check_tcp(const struct l3 *l3, void *data_end, __u32 *hdr_len)
{
	struct tcphdr *tcp = (void *)l3->l4;
	if ((void *)(tcp + 1) > data_end || l3->l4_len < sizeof(*tcp))
		return NN_IN_TRUNCATED;
	if (tcp->doff < 5)
		return NN_IN_MALFORMED;
	*hdr_len = tcp->doff * 4;
	if (*hdr_len > l3->l4_len)
		return NN_IN_TRUNCATED;
	return NN_IN_CLASSIFIED;
}

#if NN_INPUT_MODE == NN_INPUT_PAYLOAD
/* Payload mode: the inputs are the first NN_IN_BYTES of the payload of a UDP
 * datagram sent to cfg->udp_port. */
static __always_inline int mode_input(struct l3 l3, void *data_end, const struct nn_config *cfg,
				      __u64 *x, __u64 *record)
{
	if (l3.ip->protocol != IPPROTO_UDP)
		return NN_IN_OTHER;
	__u8 *payload;
	__u32 len;
	int r = udp_to_port(l3.l4, l3.l4_len, data_end, cfg, &payload, &len);
	if (r != NN_IN_CLASSIFIED)
		return r;
	if (len < NN_IN_BYTES || (void *)payload + NN_IN_BYTES > data_end)
		return NN_IN_SHORT_PAYLOAD;
	load_input(payload, x);
	return NN_IN_CLASSIFIED;
}

#elif NN_INPUT_MODE == NN_INPUT_HEADERS
/* Headers mode: every unfragmented IPv4 packet becomes a 32-byte feature
 * record; the inputs are its first NN_IN_BITS bits.  The record is built in
 * map memory (record: NN_FEATURE_BYTES of the per-CPU scratch), whose
 * contents the verifier does not track: the paths through the optional
 * fields then look alike to it and merge, on old verifiers too. */
static __always_inline int mode_input(struct l3 l3, void *data_end, const struct nn_config *cfg,
				      __u64 *x, __u64 *record)
{
	__u8 *b = (__u8 *)record;
#pragma unroll
	for (int k = 0; k < NN_FEATURE_BYTES / 8; k++)
		record[k] = 0;
	struct iphdr *ip = l3.ip;
	__u8 *l4 = l3.l4;
	__u32 l4_hdr = 0;
	b[0] = ip->protocol;
	b[1] = ip->ttl;
	b[2] = ip->tos;
	__builtin_memcpy(&b[4], &ip->tot_len, 2);
	b[14] = ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)l4;
		int t = check_tcp(&l3, data_end, &l4_hdr);
		if (t != NN_IN_CLASSIFIED)
			return t;
		b[3] = ((__u8 *)tcp)[13]; /* CWR ECE URG ACK PSH RST SYN FIN */
		__builtin_memcpy(&b[6], &tcp->source, 2);
		__builtin_memcpy(&b[8], &tcp->dest, 2);
		__builtin_memcpy(&b[12], &tcp->window, 2);
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)l4;
		if ((void *)(udp + 1) > data_end || l3.l4_len < sizeof(*udp))
			return NN_IN_TRUNCATED;
		l4_hdr = sizeof(*udp);
		__builtin_memcpy(&b[6], &udp->source, 2);
		__builtin_memcpy(&b[8], &udp->dest, 2);
	}
	__u32 payload_len = l3.l4_len - l4_hdr;
	b[10] = payload_len >> 8;
	b[11] = payload_len & 0xff;
	b[15] = l4_hdr;

	/* l4_hdr is at most 60, so the verifier can bound l4 + l4_hdr + i.
	 * Written out byte by byte: a loop leaves a variable offset into the
	 * record that older verifiers (6.1) cannot bound. */
	__u8 *payload = l4 + (l4_hdr & 0x3f);
#define COPY_PAYLOAD_BYTE(i)                                                         \
	if ((i) >= payload_len || (void *)(payload + (i) + 1) > data_end) \
		goto copied;                                                  \
	b[16 + (i)] = payload[(i)];
	COPY_PAYLOAD_BYTE(0) COPY_PAYLOAD_BYTE(1) COPY_PAYLOAD_BYTE(2) COPY_PAYLOAD_BYTE(3)
	COPY_PAYLOAD_BYTE(4) COPY_PAYLOAD_BYTE(5) COPY_PAYLOAD_BYTE(6) COPY_PAYLOAD_BYTE(7)
	COPY_PAYLOAD_BYTE(8) COPY_PAYLOAD_BYTE(9) COPY_PAYLOAD_BYTE(10) COPY_PAYLOAD_BYTE(11)
	COPY_PAYLOAD_BYTE(12) COPY_PAYLOAD_BYTE(13) COPY_PAYLOAD_BYTE(14) COPY_PAYLOAD_BYTE(15)
#undef COPY_PAYLOAD_BYTE
#if NN_FEATURE_PAYLOAD != 16
#error "the record's payload is copied in 16 statements above: change them with it"
#endif
copied:

#pragma unroll
	for (int k = 0; k < NN_IN_WORDS; k++)
		x[k] = record[k];
	x[NN_IN_WORDS - 1] &= NN_IN_TAIL_MASK;
	return NN_IN_CLASSIFIED;
}
#elif NN_INPUT_MODE == NN_INPUT_FLOW
/* Flow mode: bpf/flow.h builds the input from the flow table. */
#else
#error "NN_INPUT_MODE must be NN_INPUT_PAYLOAD, NN_INPUT_HEADERS or NN_INPUT_FLOW"
#endif

#if NN_INPUT_MODE != NN_INPUT_FLOW

/* The model's input bits from a frame (into x), or the reason it has none. */
static __always_inline int extract_input(struct xdp_md *ctx, const struct nn_config *cfg,
					 __u64 *x, __u64 *record)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l3 l3;
	int r = parse_ipv4(data, data_end, &l3);
	if (r != NN_IN_CLASSIFIED)
		return r;
	return mode_input(l3, data_end, cfg, x, record);
}
#endif

#endif
