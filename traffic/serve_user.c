/* The user-space server of the serving protocol (docs/serving.md): what
 * `attach --serve` answers from XDP, answered from a UDP socket instead, with
 * the same UDP payloads byte for byte.  It is the fastest honest user-space
 * contender: the inference is traffic/bnn_fixed.c compiled for one model
 * (its sizes are compile-time constants, hardware popcount), and datagrams
 * move in batches of up to BATCH with recvmmsg/sendmmsg.  traffic/userserve.py
 * builds it per model with the model's -D flags (layout.cflags, as the XDP
 * program) and runs it:
 *
 *   serve_user PORT WORDS_FILE MAX_SECONDS
 *
 * WORDS_FILE holds the model's NN_MODEL_WORDS u64 words (layout.model_words,
 * horizontal layout).  It prints "ready" once it listens, and at exit one
 * JSON line of counters, as nn_serve counts them. */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <linux/types.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "xdpnn_shared.h"
#include "bnn_fixed.c"

#define BATCH 64
#define MAX_DATAGRAM 9216 /* a jumbo frame's payload: what XDP would see whole */
#define REPLY_MAX (NN_SRV_OFF_SCORES + 8 * NN_CLASSES)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t model[NN_MODEL_WORDS];
static uint8_t rx[BATCH][MAX_DATAGRAM];
static uint8_t tx[BATCH][REPLY_MAX];
static struct sockaddr_in6 peers[BATCH];
static unsigned long long requests, replies, status_count[NN_SRV__COUNT];

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* The status of a request's payload, in the order of bpf/serve.h serve_parse. */
static int parse(const uint8_t *p, size_t len)
{
	if (len < NN_SRV_HDR_BYTES)
		return NN_SRV_SHORT_HEADER;
	if (get16(p + NN_SRV_OFF_MAGIC) != NN_SRV_MAGIC)
		return NN_SRV_BAD_MAGIC;
	if (p[NN_SRV_OFF_VERSION] != NN_SRV_VERSION)
		return NN_SRV_BAD_VERSION;
	if (p[NN_SRV_OFF_FLAGS] & NN_SRV_F_REPLY)
		return NN_SRV_NOT_REQUEST;
	if (get16(p + NN_SRV_OFF_MODEL) != 0)
		return NN_SRV_UNKNOWN_MODEL;
	uint16_t in_len = get16(p + NN_SRV_OFF_LENGTH);
	if (in_len < NN_IN_BYTES || len - NN_SRV_HDR_BYTES < in_len)
		return NN_SRV_SHORT_INPUT;
	return NN_SRV_OK;
}

/* The reply to a request of len bytes into out; its length, or 0: no reply. */
static size_t answer(const uint8_t *p, size_t len, uint8_t *out)
{
	int status = parse(p, len);
	requests++;
	status_count[status]++;
	if (status == NN_SRV_SHORT_HEADER || status == NN_SRV_NOT_REQUEST)
		return 0;
	int n = 0;
	uint32_t cls = NN_SRV_NO_CLASS;
	if (status == NN_SRV_OK) {
		/* The input words as the XDP program loads them (bpf/parse.h
		 * load_input): little-endian words, bits past the inputs cleared. */
		uint64_t x[NN_IN_WORDS] = {0};
		int64_t scores[NN_CLASSES];
		memcpy(x, p + NN_SRV_HDR_BYTES, NN_IN_BYTES);
		x[NN_IN_WORDS - 1] &= NN_IN_TAIL_MASK;
		cls = infer_scores(model, x, scores);
		if (p[NN_SRV_OFF_FLAGS] & NN_SRV_F_SCORES) {
			n = NN_CLASSES;
			for (int j = 0; j < n; j++) {
				uint64_t be = htobe64((uint64_t)scores[j]);
				memcpy(out + NN_SRV_OFF_SCORES + 8 * j, &be, 8);
			}
		}
	}
	size_t body = NN_SRV_OFF_SCORES + 8 * n;
	memcpy(out, p, NN_SRV_HDR_BYTES);
	out[NN_SRV_OFF_MAGIC] = NN_SRV_MAGIC >> 8;
	out[NN_SRV_OFF_MAGIC + 1] = NN_SRV_MAGIC & 0xff;
	out[NN_SRV_OFF_VERSION] = NN_SRV_VERSION;
	out[NN_SRV_OFF_FLAGS] = (p[NN_SRV_OFF_FLAGS] & NN_SRV_F_SCORES) | NN_SRV_F_REPLY;
	out[NN_SRV_OFF_LENGTH] = (body - NN_SRV_HDR_BYTES) >> 8;
	out[NN_SRV_OFF_LENGTH + 1] = (body - NN_SRV_HDR_BYTES) & 0xff;
	out[NN_SRV_OFF_STATUS] = status;
	out[NN_SRV_OFF_CLASS] = cls;
	out[NN_SRV_OFF_NSCORES] = n >> 8;
	out[NN_SRV_OFF_NSCORES + 1] = n & 0xff;
	replies++;
	return body;
}

/* A dual-stack socket on port; IPv4 alone where IPv6 is off. */
static int listen_on(int port)
{
	int one = 1, zero = 0, buf = 4 << 20;
	struct timeval tick = {0, 100000}; /* wakes to check the deadline and signals */
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd >= 0) {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
					 .sin6_addr = IN6ADDR_ANY_INIT};
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
			goto bound;
		if (errno == EADDRINUSE)
			return -1;
		close(fd);
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port)};
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a4, sizeof(a4)) != 0)
		return -1;
bound:
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof(tick));
	return fd;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PORT WORDS_FILE MAX_SECONDS (0: no limit)\n", argv[0]);
		return 2;
	}
	FILE *f = fopen(argv[2], "rb");
	if (!f || fread(model, 8, NN_MODEL_WORDS, f) != NN_MODEL_WORDS || fgetc(f) != EOF) {
		fprintf(stderr, "model words %s: not %d words\n", argv[2], NN_MODEL_WORDS);
		return 3;
	}
	fclose(f);
	double limit = atof(argv[3]), end = now() + limit;
	int fd = listen_on(atoi(argv[1]));
	if (fd < 0) {
		fprintf(stderr, "bind UDP port %s: %s\n", argv[1], strerror(errno));
		return 5;
	}
	struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	static struct mmsghdr in[BATCH], out[BATCH];
	static struct iovec in_iov[BATCH], out_iov[BATCH];
	for (int i = 0; i < BATCH; i++) {
		in_iov[i] = (struct iovec){rx[i], MAX_DATAGRAM};
		in[i].msg_hdr.msg_iov = &in_iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
		out[i].msg_hdr.msg_iov = &out_iov[i];
		out[i].msg_hdr.msg_iovlen = 1;
	}
	printf("ready\n");
	fflush(stdout);
	while (!stop && (limit <= 0 || now() < end)) {
		for (int i = 0; i < BATCH; i++) {
			in[i].msg_hdr.msg_name = &peers[i];
			in[i].msg_hdr.msg_namelen = sizeof(peers[i]);
		}
		/* Blocks for the first datagram, then takes what is queued. */
		int got = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
		if (got <= 0)
			continue; /* the tick (EAGAIN), or a signal */
		int k = 0;
		for (int i = 0; i < got; i++) {
			size_t n = answer(rx[i], in[i].msg_len, tx[k]);
			if (!n)
				continue;
			out_iov[k] = (struct iovec){tx[k], n};
			out[k].msg_hdr.msg_name = &peers[i];
			out[k].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
			k++;
		}
		for (int sent = 0; sent < k;) {
			int r = sendmmsg(fd, out + sent, k - sent, 0);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				/* A full send buffer or an unreachable peer: those replies are lost. */
				replies -= k - sent;
				break;
			}
			sent += r;
		}
	}
	printf("{\"requests\": %llu, \"replies\": %llu, \"status\": [", requests, replies);
	for (int s = 0; s < NN_SRV__COUNT; s++)
		printf("%s%llu", s ? ", " : "", status_count[s]);
	printf("]}\n");
	return 0;
}
