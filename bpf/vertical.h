/* The vertical (bit-sliced) method of a hidden layer (bpf/bnn.h includes
 * it): the mismatches of 64 neurons counted at once.  Lane p of a u64
 * belongs to neuron 64g + NN_SHIFT(p) of group g: the activation word's own
 * layout, so the result is stored as it is.  For each input bit the group
 * has one transposed weight word (lane p: that neuron's weight for the
 * bit); XOR with the input bit broadcast to all lanes gives a word whose
 * lanes are 1 where the neuron mismatches.  The counts live in bit planes:
 * plane b holds bit b of all 64 counts.  A Harley-Seal tree of carry-save
 * adders adds a whole input word's 64 mismatch words into planes 0..5 with
 * 63 full adders; what carries out of plane 5 (weight 64) ripples into the
 * planes above through half adders.  Finally a bit-sliced comparison with
 * per-neuron limits gives the activations.  See docs/datapath.md. */
#ifndef XDPNN_VERTICAL_H
#define XDPNN_VERTICAL_H

#define NN_VBITS_MAX 12 /* planes for counts up to 2048 inputs (layout.vbits) */

/* The adder tree is one inline-assembly block per input word: BPF has 10
 * registers, and clang, left to schedule C, kept the planes in a stack
 * array (or spilled them) and reloaded them around every adder, while the
 * registers holding the rest of the program's state stayed out of reach.
 * The block's ten register operands take all of them (clang saves what it
 * holds around the block, once per word): the shifted input word, the
 * weight pointer, planes 0..2 and four temporaries, and the pointer to a
 * stack struct that holds planes 3..5 and the tree's pending carries of
 * weight 4 and up, which are touched once per 8, 16, 32 and 64 bits.
 *
 * Bits go from 63 down to 0: the word's sign bit, broadcast to 64 lanes by
 * an arithmetic shift, is input bit 63's 0 or all ones; the word shifts left
 * one bit per mismatch and the weight pointer walks down by 4 words per 4
 * bits, so every 4-bit step is the same text. */
struct nn_vstate {
	__u64 c3, c4, c5;       /* planes 3..5 */
	__u64 p4, p8, p16, p32; /* pending carries of weight 4 .. 32 */
	__u64 carry;            /* what carries out of the block */
};

/* d = the mismatch word of the current top bit of xs, weight word at off
 * from w. */
#define NN_MIS(d, off)                                                  \
	"%[" #d "] = %[xs]\n\t%[" #d "] s>>= 63\n\t%[xs] <<= 1\n\t"     \
	"%[t] = *(u64 *)(%[w] " #off ")\n\t%[" #d "] ^= %[t]\n\t"
/* lo + a + b = 2 * carry + lo' in every lane, 64 full adders at once;
 * the carry ends in a, t is scratch. */
#define NN_FA(lo, a, b)                                                       \
	"%[t] = %[" #lo "]\n\t%[t] &= %[" #a "]\n\t%[" #lo "] ^= %[" #a "]\n\t" \
	"%[" #a "] = %[" #lo "]\n\t%[" #a "] &= %[" #b "]\n\t"                 \
	"%[" #a "] |= %[t]\n\t%[" #lo "] ^= %[" #b "]\n\t"
#define NN_LD(r, slot) "%[" #r "] = *(u64 *)(%[st] + %[" #slot "])\n\t"
#define NN_ST(slot, r) "*(u64 *)(%[st] + %[" #slot "]) = %[" #r "]\n\t"
/* The 32-lane variant (bnn_hidden_w): lane j < 32 counts input bit p and
 * lane 32 + j input bit p + 32 of the same neuron, so one mismatch word
 * holds two input bits.  Its input word arrives with the low half XORed
 * with the high half: the sign bit broadcast to all 64 lanes is bit p + 32,
 * right for the high half, and XORing in the low half's broadcast of
 * (bit p ^ bit p + 32) leaves bit p there; one instruction less than
 * building the halves apart and joining them.  BPF inline assembly here
 * cannot name an operand's 32-bit subregister (a 32-bit s>>= would make
 * the low broadcast one shift), so it takes three 64-bit shifts. */
#define NN_MIS2(d, off)                                                 \
	"%[" #d "] = %[xs]\n\t%[" #d "] s>>= 63\n\t"                     \
	"%[t] = %[xs]\n\t%[t] <<= 32\n\t%[t] s>>= 63\n\t%[t] >>= 32\n\t" \
	"%[" #d "] ^= %[t]\n\t%[xs] <<= 1\n\t"                            \
	"%[t] = *(u64 *)(%[w] " #off ")\n\t%[" #d "] ^= %[t]\n\t"
/* Each NN_V<n> adds the next n mismatch words (made by M, NN_MIS or
 * NN_MIS2) into the planes and leaves the carry of weight n in the
 * register its comment names. */
#define NN_V4(M) /* -> s */                                              \
	M(a, +0) M(b, -8) NN_FA(c0, a, b) "%[s] = %[a]\n\t"               \
	M(a, -16) M(b, -24) NN_FA(c0, a, b) NN_FA(c1, s, a)                 \
	"%[w] += -32\n\t"
#define NN_V8(M) /* -> b */ NN_V4(M) NN_ST(o4, s) NN_V4(M) NN_LD(b, o4) NN_FA(c2, b, s)
#define NN_V16(M) /* -> a */                                             \
	NN_V8(M) NN_ST(o8, b) NN_V8(M) NN_LD(a, o8) NN_LD(s, o3) NN_FA(s, a, b) NN_ST(o3, s)
#define NN_V32(M) /* -> b */                                             \
	NN_V16(M) NN_ST(o16, a) NN_V16(M) NN_LD(b, o16) NN_LD(s, o4c) NN_FA(s, b, a) NN_ST(o4c, s)
#define NN_V64(M) /* -> a */                                             \
	NN_V32(M) NN_ST(o32, b) NN_V32(M) NN_LD(a, o32) NN_LD(s, o5) NN_FA(s, a, b) NN_ST(o5, s)

/* Runs tree text over input word x (already shifted so its first bit is
 * the sign bit) and weight words ending at w_top; the carry goes to
 * st->carry. */
#define NN_VWORD(tree, out, x, w_top, pl0, pl1, pl2, state)                               \
	do {                                                                               \
		__u64 xs_ = (x), a_, b_, t_, s_;                                           \
		const __u64 *w_ = (w_top);                                                 \
		asm volatile(tree NN_ST(carry, out)                                        \
			     : [xs] "+r"(xs_), [w] "+r"(w_), [c0] "+r"(pl0), [c1] "+r"(pl1), \
			       [c2] "+r"(pl2), [a] "=&r"(a_), [b] "=&r"(b_), [t] "=&r"(t_), \
			       [s] "=&r"(s_)                                               \
			     : [st] "r"(state), [o3] "i"(__builtin_offsetof(struct nn_vstate, c3)),     \
			       [o4c] "i"(__builtin_offsetof(struct nn_vstate, c4)),                  \
			       [o5] "i"(__builtin_offsetof(struct nn_vstate, c5)),                   \
			       [o4] "i"(__builtin_offsetof(struct nn_vstate, p4)),                   \
			       [o8] "i"(__builtin_offsetof(struct nn_vstate, p8)),                   \
			       [o16] "i"(__builtin_offsetof(struct nn_vstate, p16)),                 \
			       [o32] "i"(__builtin_offsetof(struct nn_vstate, p32)),                 \
			       [carry] "i"(__builtin_offsetof(struct nn_vstate, carry))              \
			     : "memory");                                                  \
	} while (0)

/* Adds carry (weight 2^from) into planes from .. bits-1 with half adders:
 * no count exceeds the input count < 2^bits, so nothing carries out of the
 * top plane. */
static __always_inline void ripple(struct nn_vstate *st, __u64 *hi, __u64 carry, const int from,
				   const int bits)
{
	if (from == 5) {
		__u64 t = st->c5 & carry;
		st->c5 ^= carry;
		carry = t;
	}
#pragma unroll
	for (int b = 6; b < bits; b++) {
		__u64 t = hi[b - 6] & carry;
		hi[b - 6] ^= carry;
		carry = t;
	}
}

/* A hidden layer, vertically (its groups [g0, g1): a stage may hold part of
 * it, stage.h): for each group of 64 neurons, in_words * 64
 * transposed weight words (input word k's bit p at k * 64 + p), then `bits`
 * planes of the limits U (m[t_off + g * bits + b] is bit b of the 64 limits).
 * Neuron fires iff mismatches < U; the loader derives U from the threshold,
 * and padding lanes have U = 0, so their bits stay 0. */
static __always_inline void bnn_hidden_v(const __u64 *m, const __u64 *in, __u64 *out,
					 const int n_in, const int in_words, const int w_off,
					 const int t_off, const int bits, const int g0, const int g1)
{
	/* A last word whose upper half is all padding (inputs 64k+32 ..
	 * 64k+63, bits 32..63 as loaded) takes half a tree: its weight words
	 * and input bits there are 0 and would add nothing. */
	const int half_tail = n_in % 64 != 0 && n_in % 64 <= 32;
	const int full = in_words - half_tail;
	/* Bounded loops over groups and whole input words, as in bnn_hidden:
	 * the verifier walks each iteration, a body of about 870
	 * instructions, so its count stays linear in the weights. */
#pragma clang loop unroll(disable)
	for (int g = g0; g < g1; g++) {
		const __u64 *w = m + w_off + g * in_words * 64;
		struct nn_vstate st = {};
		__u64 c0 = 0, c1 = 0, c2 = 0, hi[NN_VBITS_MAX - 6] = {};
#pragma clang loop unroll(disable)
		for (int k = 0; k < full; k++) {
			NN_VWORD(NN_V64(NN_MIS), a, in[k], w + k * 64 + 63, c0, c1, c2, &st);
			ripple(&st, hi, st.carry, 6, bits);
		}
		if (half_tail) {
			/* Bits 31..0: the lower half moved up to the sign bit. */
			NN_VWORD(NN_V32(NN_MIS), b, in[full] << 32, w + full * 64 + 31, c0, c1, c2, &st);
			ripple(&st, hi, st.carry, 5, bits);
		}
		/* count < U, from the low plane up: where the planes differ,
		 * U's bit decides; where they agree, the lower planes' verdict
		 * stands. */
		const __u64 *u = m + t_off + g * bits;
		const __u64 low[6] = {c0, c1, c2, st.c3, st.c4, st.c5};
		__u64 lt = 0;
#pragma unroll
		for (int b = 0; b < bits; b++) {
			__u64 plane = b < 6 ? low[b] : hi[b - 6];
			lt ^= (lt ^ u[b]) & (u[b] ^ plane);
		}
		out[g] = lt;
	}
}

/* A hidden layer of at most 32 neurons in 32-bit lanes (method "w"): per
 * input word k, 32 transposed words (word k * 32 + q: lane NN_SHIFT(j) is
 * neuron j's weight for bit q of the word, lane 32 + NN_SHIFT(j) its
 * weight for bit q + 32), then `bits` planes of the limits as in
 * bnn_hidden_v.  One adder tree of 32 mismatch words per input word (half
 * the vertical method's) counts both halves; at the end the halves' counts
 * are added by a bit-sliced ripple adder and compared with the limits.
 * Counts of either half and their sum stay below 2^bits (each is at most
 * n_in). */
static __always_inline void bnn_hidden_w(const __u64 *m, const __u64 *in, __u64 *out,
					 const int in_words, const int w_off, const int t_off,
					 const int bits)
{
	const __u64 *w = m + w_off;
	struct nn_vstate st = {};
	__u64 c0 = 0, c1 = 0, c2 = 0, hi[NN_VBITS_MAX - 6] = {};
	/* Bounded loop over input words, a body of about 600 instructions:
	 * the verifier's count stays linear in the weights. */
#pragma clang loop unroll(disable)
	for (int k = 0; k < in_words; k++) {
		__u64 x = in[k];
		NN_VWORD(NN_V32(NN_MIS2), b, x ^ (x >> 32), w + k * 32 + 31, c0, c1, c2, &st);
		ripple(&st, hi, st.carry, 5, bits);
	}
	/* Low half + high half, plane by plane (a ripple-carry adder in the
	 * low 32 lanes), then count < U as in bnn_hidden_v: the limits'
	 * upper 32 lanes are 0, so the result's are too. */
	const __u64 *u = m + t_off;
	const __u64 low[6] = {c0, c1, c2, st.c3, st.c4, st.c5};
	__u64 lt = 0, carry = 0;
#pragma unroll
	for (int b = 0; b < bits; b++) {
		__u64 plane = b < 6 ? low[b] : hi[b - 6];
		__u64 l = plane & 0xffffffffULL, h = plane >> 32, lh = l ^ h;
		__u64 sum = lh ^ carry;
		carry = (l & h) | (carry & lh);
		lt ^= (lt ^ u[b]) & (u[b] ^ sum);
	}
	out[0] = lt;
}

#endif
