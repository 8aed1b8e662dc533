/* A first layer of multi-bit inputs (model format version 2): input i is
 * one k-bit value, the low k bits of input byte i, unsigned or two's
 * complement (NN_IN_SIGNED).  The semantics are trainer/reference.py's
 * value_dot; this is the bit-plane form of it (docs/model-format.md,
 * "Multi-bit inputs"):
 *
 *   x_i = sum_p c_p * bit_p(x_i), c_p = 2^p (the sign plane: -2^(k-1)),
 *   sum_i bit_p(x_i) * w_i = P - d_p, P = popcount(w), d_p = popcount(plane_p XOR w),
 *   a = C * P - E, C = sum_p c_p, E = sum_p c_p * d_p.
 *
 * The loader stores U = C * P - T in the threshold word, so the neuron
 * fires iff a >= T, iff E <= U: per neuron one popcount per plane word and
 * one compare, as in a binary layer.
 *
 * The input buffer holds the NN_L0_IN input bytes as loaded (parse.h, in
 * NN_IN_WORDS words); the planes are built once per packet: plane p of
 * input word k has, in the activation layout (NN_SHIFT), bit p of the 64
 * bytes 64k .. 64k+63.  They are built in the other scratch buffer and
 * copied over the input bytes (NN_MAX_WORDS >= k * NN_L0_IN_WORDS, from the
 * loader): on the stack, up to 128 bytes of planes would push the program
 * past the 512-byte BPF stack. */
#ifndef XDPNN_BNN_MULTIBIT_H
#define XDPNN_BNN_MULTIBIT_H

#if !defined(NN_IN_VALUE_BITS) || !defined(NN_IN_SIGNED)
#error "multi-bit input flags missing: the loader passes them from the model file"
#endif
#if NN_IN_VALUE_BITS < 2 || NN_IN_VALUE_BITS > 8
#error "NN_IN_VALUE_BITS is 2..8; binary models use the plain first layer"
#endif

/* Bit p of each of the 8 bytes of v, gathered into one byte with byte 0 in
 * the most significant bit (the packet's bit order).  The multiplier's bits
 * 0, 9, ..., 63 move byte i's bit (at 8i) to bit 63 - i of the product, and
 * no two partial products meet, so nothing carries. */
static __always_inline __u64 nn_plane_byte(__u64 v, const int p)
{
	return (((v >> p) & 0x0101010101010101ULL) * 0x8040201008040201ULL) >> 56;
}

/* Layer 0 over k-bit inputs: the planes, then per unit E against U. */
static __always_inline void bnn_multibit_first(const __u64 *m, __u64 *in, __u64 *out)
{
	__u64 *planes = out;
	/* A loop over planes, not unrolled: unrolled, clang keeps all 16
	 * input words in registers across planes and spills past the stack. */
#pragma clang loop unroll(disable)
	for (int p = 0; p < NN_IN_VALUE_BITS; p++) {
#pragma unroll
		for (int k = 0; k < NN_L0_IN_WORDS; k++) {
			__u64 word = 0;
			/* Input words past NN_IN_WORDS are padding: zero planes. */
#pragma unroll
			for (int g = 0; g < 8 && 8 * k + g < NN_IN_WORDS; g++)
				word |= nn_plane_byte(in[8 * k + g], p) << (8 * g);
			planes[p * NN_L0_IN_WORDS + k] = word;
		}
	}
#pragma unroll
	for (int k = 0; k < NN_IN_VALUE_BITS * NN_L0_IN_WORDS; k++)
		in[k] = planes[k];
	planes = in;
	/* Bounded loops over output words and neurons, as bnn_hidden. */
#pragma clang loop unroll(disable)
	for (int g = 0; g < (NN_L0_OUT + 63) / 64; g++) {
		__u64 acc = 0;
		const int end = NN_L0_OUT - 64 * g < 64 ? NN_L0_OUT - 64 * g : 64;
#pragma clang loop unroll(disable)
		for (int i = 0; i < end; i++) {
			const int j = 64 * g + i;
			const __u64 *w = m + NN_L0_W + j * NN_L0_IN_WORDS;
			__s64 e = 0;
#pragma unroll
			for (int p = 0; p < NN_IN_VALUE_BITS; p++) {
				__s64 d = xor_popcount(planes + p * NN_L0_IN_WORDS, w, NN_L0_IN_WORDS);
				if (NN_IN_SIGNED && p == NN_IN_VALUE_BITS - 1)
					e -= d << p;
				else
					e += d << p;
			}
			/* fire = (E <= U) = the sign bit of E - 1 - U. */
			__u64 fire = e - 1 - (__s64)m[NN_L0_T + j];
			NN_SIGN_BIT(fire);
			acc |= fire << NN_SHIFT(i);
		}
		out[g] = acc;
	}
}

#endif
