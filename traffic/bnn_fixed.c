/* The shape-specialised user-space baseline: the binarized MLP of
 * trainer/reference.py on the flat weight words of loader/layout.py (the
 * words the XDP program reads), compiled once per model with the model's -D
 * flags (layout.cflags, the XDP program's own), so every size is a
 * compile-time constant and the compiler unrolls the word loops and keeps
 * the input words in registers.  traffic/baseline.py builds it as
 *   BNN_SIMD=0    scalar, hardware popcnt, auto-vectorisation off;
 *   BNN_SIMD=256  AVX2, popcount by nibble lookup (pshufb);
 *   BNN_SIMD=512  AVX-512 VPOPCNTDQ (vpopcntq).
 * A SIMD build works across the words of one weight row; rows of one or two
 * words stay scalar, where a vector only adds its final horizontal sum. */
#include <stdint.h>
#if BNN_SIMD
#include <immintrin.h>
#endif

#if !defined(NN_HIDDEN) || !defined(NN_CLASSES) || !defined(NN_MAX_WORDS) || !defined(BNN_SIMD)
#error "model shape flags missing: traffic/baseline.py passes them from the model"
#endif

#define WORDS(n) (((n) + 63) / 64)
/* Bit j of an activation vector, in the packet's bit order (bpf/bnn.h NN_SHIFT). */
#define SHIFT(j) (((j) & 0x38) | (7 - ((j) & 7)))
#define INLINE static inline __attribute__((always_inline))

#if BNN_SIMD == 512
#define LANES 8
INLINE int64_t vector_mismatches(const uint64_t *x, const uint64_t *w, const int nw)
{
	__m512i acc = _mm512_setzero_si512();
	for (int k = 0; k < nw; k += LANES) {
		/* Masked loads: the tail of a row never reads the next row. */
		__mmask8 m = nw - k >= LANES ? 0xff : (1u << (nw - k)) - 1;
		__m512i d = _mm512_xor_si512(_mm512_maskz_loadu_epi64(m, x + k),
					     _mm512_maskz_loadu_epi64(m, w + k));
		acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(d));
	}
	return _mm512_reduce_add_epi64(acc);
}
#elif BNN_SIMD == 256
#define LANES 4
INLINE int64_t vector_mismatches(const uint64_t *x, const uint64_t *w, const int nw)
{
	/* Bits set in each nibble value, looked up 32 bytes at a time. */
	const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
					     0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
	const __m256i low = _mm256_set1_epi8(0x0f), lane = _mm256_setr_epi64x(0, 1, 2, 3);
	__m256i bytes = _mm256_setzero_si256();
	for (int k = 0; k < nw; k += LANES) {
		__m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nw - k), lane);
		__m256i d = _mm256_xor_si256(_mm256_maskload_epi64((const long long *)x + k, m),
					     _mm256_maskload_epi64((const long long *)w + k, m));
		/* Per-byte counts: at most 8 per chunk, 4 chunks (16 words), no overflow. */
		bytes = _mm256_add_epi8(bytes, _mm256_shuffle_epi8(lut, _mm256_and_si256(d, low)));
		bytes = _mm256_add_epi8(bytes, _mm256_shuffle_epi8(
				lut, _mm256_and_si256(_mm256_srli_epi16(d, 4), low)));
	}
	__m256i q = _mm256_sad_epu8(bytes, _mm256_setzero_si256()); /* 4 lane sums */
	__m128i s = _mm_add_epi64(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
	return _mm_cvtsi128_si64(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s)));
}
#endif

/* Positions where x and w differ, over nw words (a constant after inlining). */
INLINE int64_t mismatches(const uint64_t *x, const uint64_t *w, const int nw)
{
#if BNN_SIMD
	if (nw > 2)
		return vector_mismatches(x, w, nw);
#endif
	int64_t d = 0;
#pragma GCC unroll 16
	for (int k = 0; k < nw; k++)
		d += __builtin_popcountll(x[k] ^ w[k]);
	return d;
}

/* A hidden layer: neuron j fires iff n_in - 2 * mismatches >= T_j.  Each
 * output word is built in a register, so no store can alias the inputs. */
INLINE void hidden(const uint64_t *m, const uint64_t *in, uint64_t *out, const int n_in,
		   const int n_out, const int w_off, const int t_off)
{
	const int nw = WORDS(n_in);
	for (int k = 0; k < WORDS(n_out); k++) {
		uint64_t word = 0;
		for (int j = 64 * k; j < n_out && j < 64 * k + 64; j++) {
			int64_t a = n_in - 2 * mismatches(in, m + w_off + j * nw, nw);
			word |= (uint64_t)(a >= (int64_t)m[t_off + j]) << SHIFT(j);
		}
		out[k] = word;
	}
}

/* The output layer: argmax of scale_j * a_j + bias_j, ties to the lowest class;
 * the scores too where `scores` is not NULL (the user-space server's replies). */
INLINE uint32_t output(const uint64_t *m, const uint64_t *in, int64_t *scores)
{
	int64_t best = 0;
	uint32_t cls = 0;
	for (int j = 0; j < NN_CLASSES; j++) {
		int64_t a = NN_OUT_IN - 2 * mismatches(in, m + NN_OUT_W + j * NN_OUT_IN_WORDS,
						       NN_OUT_IN_WORDS);
		int64_t s = (int64_t)m[NN_OUT_SCALE + j] * a + (int64_t)m[NN_OUT_BIAS + j];
		if (scores)
			scores[j] = s;
		if (j == 0 || s > best)
			best = s, cls = j;
	}
	return cls;
}

#define LAYER(l, in, out) hidden(m, in, out, NN_L##l##_IN, NN_L##l##_OUT, NN_L##l##_W, NN_L##l##_T)

/* One inference: the class, and the scores into `scores` unless it is NULL. */
INLINE uint32_t infer_scores(const uint64_t *m, const uint64_t *x, int64_t *scores)
{
	uint64_t a[NN_MAX_WORDS], b[NN_MAX_WORDS];
	LAYER(0, x, a);
#if NN_HIDDEN == 1
	return output(m, a, scores);
#else
	LAYER(1, a, b);
#if NN_HIDDEN == 2
	return output(m, b, scores);
#else
	LAYER(2, b, a);
#if NN_HIDDEN == 3
	return output(m, a, scores);
#else
	LAYER(3, a, b);
	return output(m, b, scores);
#endif
#endif
#endif
}

/* One inference, a call of its own like one XDP program run per packet. */
static __attribute__((noinline)) uint32_t infer(const uint64_t *m, const uint64_t *x)
{
	return infer_scores(m, x, 0);
}

/* Classes of n inputs (NN_IN_WORDS words each), one inference at a time,
 * `rounds` passes over them (timing loops stay out of Python). */
void bnn_fixed(const uint64_t *m, const uint64_t *inputs, int n, int rounds, uint32_t *classes)
{
	for (int r = 0; r < rounds; r++)
		for (int s = 0; s < n; s++)
			classes[s] = infer(m, inputs + (long)s * NN_IN_WORDS);
}
