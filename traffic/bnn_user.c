/* The generic user-space baseline: the same binarized MLP as bpf/bnn.h, on
 * the same flat weight words (loader/layout.py), with hardware popcount, but
 * looping over sizes known only at run time (one build for every model).
 * traffic/bnn_fixed.c is the same inference with the sizes compiled in; the
 * gap between the two is what specialisation buys. */
#include <stdint.h>
#include <string.h>

#define MAX_WORDS 32 /* 2048 bits: trainer/model.py MAX_HIDDEN_UNITS */

static inline int words(int bits) { return (bits + 63) / 64; }

/* Bit j of an activation vector, in the packet's bit order (bpf/bnn.h NN_SHIFT). */
static inline int shift(int j) { return (j & 0x38) | (7 - (j & 7)); }

static inline int64_t dot(const uint64_t *x, const uint64_t *w, int n, int nw)
{
	int d = 0;
	for (int k = 0; k < nw; k++)
		d += __builtin_popcountll(x[k] ^ w[k]);
	return n - 2 * (int64_t)d;
}

/* Hidden layer for one sample; returns the words after its thresholds. */
static const uint64_t *hidden(const uint64_t *m, int n_in, int n_out, const uint64_t *in,
			      uint64_t *out)
{
	int nw = words(n_in);
	const int64_t *t = (const int64_t *)(m + (size_t)n_out * nw);
	memset(out, 0, words(n_out) * 8);
	/* Branchless, like bpf/bnn.h: a neuron fires half the time at random. */
	for (int j = 0; j < n_out; j++)
		out[j >> 6] |= (uint64_t)(dot(in, m + (size_t)j * nw, n_in, nw) >= t[j]) << shift(j);
	return m + (size_t)n_out * nw + n_out;
}

static uint32_t output(const uint64_t *m, int n_in, int n_out, const uint64_t *in)
{
	int nw = words(n_in);
	const int64_t *scale = (const int64_t *)(m + (size_t)n_out * nw), *bias = scale + n_out;
	int64_t best = 0;
	uint32_t cls = 0;
	for (int j = 0; j < n_out; j++) {
		int64_t s = scale[j] * dot(in, m + (size_t)j * nw, n_in, nw) + bias[j];
		if (j == 0 || s > best) /* ties go to the lowest class */
			best = s, cls = j;
	}
	return cls;
}

/* One inference through every layer. */
static uint32_t infer(const uint64_t *m, const int *sizes, int n_sizes, const uint64_t *x)
{
	uint64_t a[MAX_WORDS], b[MAX_WORDS];
	uint64_t *bufs[2] = {a, b};
	const uint64_t *w = m;
	for (int l = 0; l + 2 < n_sizes; l++) {
		w = hidden(w, sizes[l], sizes[l + 1], x, bufs[l & 1]);
		x = bufs[l & 1];
	}
	return output(w, sizes[n_sizes - 2], sizes[n_sizes - 1], x);
}

/* Classes of n inputs, one sample at a time (what a per-request server
 * does), `rounds` passes over them (timing loops stay out of Python). */
void bnn_each(const uint64_t *m, const int *sizes, int n_sizes, const uint64_t *inputs, int n,
	      int rounds, uint32_t *classes)
{
	for (int r = 0; r < rounds; r++)
		for (int s = 0; s < n; s++)
			classes[s] = infer(m, sizes, n_sizes, inputs + (size_t)s * words(sizes[0]));
}
