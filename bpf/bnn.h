/* Binarized MLP inference (BinaryNet): XNOR + popcount with batch norm
 * folded into integer thresholds.  The semantics are defined by
 * trainer/reference.py and docs/model-format.md; this is their kernel twin.
 *
 * The model is one flat array of u64 words (a map value).  Each layer's word
 * offset and size arrive as -D flags computed by loader/layout.py from the
 * model file, so every bound below is a compile-time constant.
 *
 * Arithmetic: input and weight bits are 1 for +1 and 0 for -1, padded with 0
 * to whole words.  For n real inputs with d = popcount(x XOR w) mismatches,
 * the ±1 dot product is a = n - 2d; padding bits are 0 on both sides and
 * never count as mismatches. */
#ifndef XDPNN_BNN_H
#define XDPNN_BNN_H

#if !defined(NN_HIDDEN) || !defined(NN_CLASSES) || !defined(NN_MAX_WORDS)
#error "model shape flags missing: the loader passes them from the model file"
#endif

/* Position of activation j inside its u64 word: bytes in order, and within
 * a byte the first activation in the most significant bit (the packet's bit
 * order, see parse.h). */
/* x = (x < 0) as 0 or 1, in assembly: clang turns the C shift into a
 * compare-and-jump, and a jump per neuron or class makes the verifier walk
 * every path (for the argmax, every (class, best so far) pair).  Selects
 * below multiply by this bit rather than AND with a 0/-1 mask, which recent
 * verifiers also split into two paths. */
#define NN_SIGN_BIT(x) asm volatile("%0 >>= 63" : "+r"(x))

#define NN_SHIFT(j) (((j) & 0x38) | (7 - ((j) & 7)))

/* SWAR popcount, the first two steps: 16 nibbles of counts 0..4. */
static __always_inline __u64 nibble_counts(__u64 v)
{
	v -= (v >> 1) & 0x5555555555555555ULL;
	return (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
}

/* popcount(x XOR w) over `words` words.  BPF has no popcount instruction,
 * and clang's SWAR sequence per word ends in a multiply that sums its
 * bytes; here partial counts are added first and reduced once: two words'
 * nibbles (at most 8 each) are added, spread to bytes and summed over all
 * pairs (at most 8 pairs of 16 = 128 per byte), then the bytes are summed
 * once per row, in 16-bit lanes where the total can exceed 255.  Rows of
 * more than 16 words (2048-wide layers) fold the bytes into 16-bit lanes
 * every 8 pairs, before a byte can overflow. */
static __always_inline __u32 xor_popcount(const __u64 *x, const __u64 *w, const int words)
{
	const __u64 m4 = 0x0f0f0f0f0f0f0f0fULL;
	const __u64 m8 = 0x00ff00ff00ff00ffULL;
	__u64 bytes = 0, lanes = 0;
	/* Unrolled, so each load has a constant offset. */
#pragma unroll
	for (int k = 0; k < words; k += 2) {
		__u64 n = nibble_counts(x[k] ^ w[k]);
		if (k + 1 < words)
			n += nibble_counts(x[k + 1] ^ w[k + 1]);
		bytes += (n & m4) + ((n >> 4) & m4);
		if (words > 16 && (k % 16 == 14 || k + 2 >= words)) {
			lanes += (bytes & m8) + ((bytes >> 8) & m8);
			bytes = 0;
		}
	}
	if (words > 16)
		return (lanes * 0x0001000100010001ULL) >> 48;
	if (words * 64 < 256)
		return (bytes * 0x0101010101010101ULL) >> 56;
	bytes = (bytes & m8) + ((bytes >> 8) & m8);
	return (bytes * 0x0001000100010001ULL) >> 48;
}

/* A hidden layer, or its groups of 64 neurons [g0, g1) (a stage that holds
 * part of a layer, stage.h): neuron j fires (bit 1) iff its dot product
 * a >= T_j. */
static __always_inline void bnn_hidden(const __u64 *m, const __u64 *in, __u64 *out,
				       const int n_in, const int in_words, const int n_out,
				       const int w_off, const int t_off, const int g0, const int g1)
{
	/* Bounded loops over output words and their neurons: the verifier
	 * walks every iteration, which is what limits the largest model
	 * (docs/datapath.md, "Verifier limits").  An output word is built in
	 * a register and stored once. */
#pragma clang loop unroll(disable)
	for (int g = g0; g < g1; g++) {
		__u64 acc = 0;
		const int end = n_out - 64 * g < 64 ? n_out - 64 * g : 64;
#pragma clang loop unroll(disable)
		for (int i = 0; i < end; i++) {
			const int j = 64 * g + i;
			__s64 a = n_in - 2 * (__s64)xor_popcount(in, m + w_off + j * in_words,
								 in_words);
			/* fire = (a >= T) = the sign bit of T - 1 - a. */
			__u64 fire = (__s64)m[t_off + j] - 1 - a;
			NN_SIGN_BIT(fire);
			acc |= fire << NN_SHIFT(i);
		}
		out[g] = acc;
	}
}

#include "vertical.h"

/* Output score of class j: scale_j * a_j + bias_j. */
static __always_inline __s64 bnn_score(const __u64 *m, const __u64 *in, const int j)
{
	__s64 a = NN_OUT_IN - 2 * (__s64)xor_popcount(in, m + NN_OUT_W + j * NN_OUT_IN_WORDS,
						      NN_OUT_IN_WORDS);
	return (__s64)m[NN_OUT_SCALE + j] * a + (__s64)m[NN_OUT_BIAS + j];
}

/* The output layer: the class is the argmax of the scores, ties going to
 * the lowest class. */
static __always_inline __u32 bnn_output(const __u64 *m, const __u64 *in)
{
	__s64 best = bnn_score(m, in, 0);
	__s64 cls = 0;
#pragma clang loop unroll(disable)
	for (int j = 1; j < NN_CLASSES; j++) {
		__s64 s = bnn_score(m, in, j);
		/* Branchless select; scores are below 2^42 in magnitude, so
		 * best - s cannot overflow. */
		__s64 take = best - s;
		NN_SIGN_BIT(take); /* 1 iff s > best */
		best += (s - best) * take;
		cls += (j - cls) * take;
	}
	return cls;
}

/* NN_L<l>_METHOD, chosen per layer by loader/layout.py: 0 horizontal, 1 vertical,
 * 2 vertical in 32-bit lanes (at most 32 neurons: one group, never split).
 * NN_HIDDEN_PART computes the layer's groups of 64 neurons [g0, g1) only. */
#define NN_GROUPS(n) (((n) + 63) / 64)
#define NN_HIDDEN_PART(l, in, out, g0, g1)                                                       \
	do {                                                                                     \
		if (NN_L##l##_METHOD == 2)                                                       \
			bnn_hidden_w(m, in, out, NN_L##l##_IN_WORDS, NN_L##l##_W, NN_L##l##_T,   \
				     NN_L##l##_BITS);                                            \
		else if (NN_L##l##_METHOD == 1)                                                  \
			bnn_hidden_v(m, in, out, NN_L##l##_IN, NN_L##l##_IN_WORDS, NN_L##l##_W,  \
				     NN_L##l##_T, NN_L##l##_BITS, g0, g1);                         \
		else                                                                             \
			bnn_hidden(m, in, out, NN_L##l##_IN, NN_L##l##_IN_WORDS, NN_L##l##_OUT,  \
				   NN_L##l##_W, NN_L##l##_T, g0, g1);                             \
	} while (0)
#define NN_HIDDEN_LAYER(l, in, out) NN_HIDDEN_PART(l, in, out, 0, NN_GROUPS(NN_L##l##_OUT))

/* The first layer: a hidden layer of input bits, or of k-bit input values
 * (model format version 2, NN_IN_VALUE_BITS > 1: bnn_multibit.h). */
#if defined(NN_IN_VALUE_BITS) && NN_IN_VALUE_BITS > 1
#include "bnn_multibit.h"
#define NN_FIRST_LAYER(in, out) bnn_multibit_first(m, in, out)
#else
#define NN_FIRST_LAYER(in, out) NN_HIDDEN_LAYER(0, in, out)
#endif

/* Runs the model on x; a and b are scratch buffers of NN_MAX_WORDS words,
 * and x may be one of them. */
static __always_inline __u32 bnn_infer(const __u64 *m, __u64 *a, __u64 *b)
{
	/* Layers alternate between the two buffers: a -> b -> a -> ... */
	NN_FIRST_LAYER(a, b);
#if NN_HIDDEN == 1
	return bnn_output(m, b);
#else
	NN_HIDDEN_LAYER(1, b, a);
#if NN_HIDDEN == 2
	return bnn_output(m, a);
#else
	NN_HIDDEN_LAYER(2, a, b);
#if NN_HIDDEN == 3
	return bnn_output(m, b);
#else
	NN_HIDDEN_LAYER(3, b, a);
	return bnn_output(m, a);
#endif
#endif
#endif
}

#endif
