/* The user-space baseline: the same binarized MLP as bpf/bnn.h, on the same
 * flat weight words (loader/layout.py), compiled by traffic/baseline.py with
 * the system compiler and hardware popcount.  Two ways to run a batch:
 *   bnn_each   one sample at a time through every layer (what a per-request
 *              server does);
 *   bnn_batch  layer by layer over the whole batch, so each weight row is
 *              loaded once per batch instead of once per sample. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 16 /* 1024 bits: trainer/model.py MAX_INPUT_BITS */

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

void bnn_each(const uint64_t *m, const int *sizes, int n_sizes, const uint64_t *inputs, int n,
	      uint32_t *classes)
{
	uint64_t a[MAX_WORDS], b[MAX_WORDS];
	int in_words = words(sizes[0]);
	for (int s = 0; s < n; s++) {
		const uint64_t *w = m, *x = inputs + (size_t)s * in_words;
		uint64_t *bufs[2] = {a, b};
		for (int l = 0; l + 2 < n_sizes; l++) {
			w = hidden(w, sizes[l], sizes[l + 1], x, bufs[l & 1]);
			x = bufs[l & 1];
		}
		classes[s] = output(w, sizes[n_sizes - 2], sizes[n_sizes - 1], x);
	}
}

int bnn_batch(const uint64_t *m, const int *sizes, int n_sizes, const uint64_t *inputs, int n,
	      uint32_t *classes)
{
	/* Activations of the whole batch, MAX_WORDS words per sample. */
	uint64_t *bufs[2] = {malloc((size_t)n * MAX_WORDS * 8), malloc((size_t)n * MAX_WORDS * 8)};
	if (!bufs[0] || !bufs[1]) {
		free(bufs[0]);
		free(bufs[1]);
		return -1;
	}
	const uint64_t *w = m, *x = inputs;
	int stride = words(sizes[0]);
	for (int l = 0; l + 2 < n_sizes; l++) {
		int n_in = sizes[l], n_out = sizes[l + 1], nw = words(n_in);
		const int64_t *t = (const int64_t *)(w + (size_t)n_out * nw);
		uint64_t *out = bufs[l & 1];
		memset(out, 0, (size_t)n * MAX_WORDS * 8);
		for (int j = 0; j < n_out; j++) {
			const uint64_t *row = w + (size_t)j * nw;
			for (int s = 0; s < n; s++)
				out[(size_t)s * MAX_WORDS + (j >> 6)] |=
					(uint64_t)(dot(x + (size_t)s * stride, row, n_in, nw) >= t[j])
					<< shift(j);
		}
		w += (size_t)n_out * nw + n_out;
		x = out;
		stride = MAX_WORDS;
	}
	for (int s = 0; s < n; s++)
		classes[s] = output(w, sizes[n_sizes - 2], sizes[n_sizes - 1], x + (size_t)s * stride);
	free(bufs[0]);
	free(bufs[1]);
	return 0;
}
