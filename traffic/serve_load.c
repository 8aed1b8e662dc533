/* The serving benchmark's load client (traffic/bench_serving.py): requests
 * at a fixed rate, open loop, from one UDP socket, with the round-trip time
 * of every reply.  Python's client (xdpnn.client) tops out near 10^4-10^5
 * requests/s; this one paces batches of sendmmsg on a busy clock and reads
 * replies with recvmmsg between them, so the rates the bench asks for are
 * the rates sent (it reports what it reached).
 *
 *   serve_load ADDR PORT INPUTS_FILE IN_BYTES CLASSES_FILE RATE SECONDS TIMEOUT WINDOW
 *
 * WINDOW 0: open loop at RATE requests/s; WINDOW w > 0: closed loop, w
 * requests outstanding (RATE is then only the most it sends per second),
 * which finds how many requests/s a server serves without flooding it.
 * INPUTS_FILE: N inputs of IN_BYTES each, cycled; CLASSES_FILE: N bytes, the
 * reference's class of each.  Request i carries id i and input i % N; its
 * reply must carry class[i % N], else it counts as a mismatch.  Prints one
 * JSON line: sent, received, lost, mismatched, seconds, p50/p90/p99/max RTT
 * in microseconds. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/types.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "xdpnn_shared.h"

#define BATCH 32
#define MAX_REQUESTS (1 << 24)

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = ftell(f);
	rewind(f);
	uint8_t *buf = malloc(*len ? *len : 1);
	if (buf && fread(buf, 1, *len, f) != *len) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	if (argc != 10) {
		fprintf(stderr, "usage: %s ADDR PORT INPUTS_FILE IN_BYTES CLASSES_FILE RATE SECONDS "
				"TIMEOUT WINDOW\n", argv[0]);
		return 2;
	}
	size_t in_len, n_classes;
	size_t in_bytes = atoi(argv[4]);
	uint8_t *inputs = read_file(argv[3], &in_len), *classes = read_file(argv[5], &n_classes);
	double rate = atof(argv[6]), seconds = atof(argv[7]), timeout = atof(argv[8]);
	size_t window = atoi(argv[9]);
	if (!inputs || !classes || !in_bytes || in_len % in_bytes || in_len / in_bytes != n_classes ||
	    !n_classes || rate <= 0 || seconds <= 0 || in_bytes + NN_SRV_HDR_BYTES > 1472) {
		fprintf(stderr, "bad inputs, classes, rate or seconds\n");
		return 2;
	}
	size_t n_inputs = n_classes;
	size_t total = rate * seconds;
	if (total > MAX_REQUESTS)
		total = MAX_REQUESTS;

	struct sockaddr_storage ss = {0};
	socklen_t sl;
	struct sockaddr_in *a4 = (void *)&ss;
	struct sockaddr_in6 *a6 = (void *)&ss;
	if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(atoi(argv[2]));
		sl = sizeof(*a4);
	} else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(atoi(argv[2]));
		sl = sizeof(*a6);
	} else {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	/* 8 MB each way: the *FORCE options (root) pass net.core.rmem_max and
	 * wmem_max (212992 by default), which would otherwise cap the buffer at
	 * a few hundred replies: a millisecond at the rates measured here. */
	int buf = 8 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)))
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sl) != 0) {
		fprintf(stderr, "connect %s: %s\n", argv[1], strerror(errno));
		return 5;
	}

	double *sent_at = calloc(total, sizeof(double));
	float *rtt = malloc(total * sizeof(float));
	uint8_t *answered = calloc(total, 1);
	static uint8_t tx[BATCH][1472], rx[BATCH][2048];
	struct mmsghdr out[BATCH], in[BATCH];
	struct iovec out_iov[BATCH], in_iov[BATCH];
	memset(out, 0, sizeof(out));
	memset(in, 0, sizeof(in));
	for (int i = 0; i < BATCH; i++) {
		in_iov[i] = (struct iovec){rx[i], sizeof(rx[i])};
		in[i].msg_hdr.msg_iov = &in_iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
		out[i].msg_hdr.msg_iov = &out_iov[i];
		out[i].msg_hdr.msg_iovlen = 1;
	}
	size_t sent = 0, received = 0, mismatched = 0, other = 0;
	prctl(PR_SET_TIMERSLACK, 1UL); /* wake when the next request is due, not 50 us later */
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	double start = now(), end_send = start + seconds, t = start, last_send = start;
	while (1) {
		t = now();
		/* Every request due by now, in batches. */
		size_t due = t < end_send ? (size_t)((t - start) * rate) + 1 : sent;
		if (window && due > received + window)
			due = received + window;
		if (due > total)
			due = total;
		/* One batch, then the replies: a client that only sends while it
		 * is behind would let the replies overflow its socket. */
		if (sent < due) {
			int k = 0;
			for (; k < BATCH && sent + k < due; k++) {
				uint64_t id = sent + k;
				uint8_t *p = tx[k];
				p[0] = NN_SRV_MAGIC >> 8;
				p[1] = NN_SRV_MAGIC & 0xff;
				p[2] = NN_SRV_VERSION;
				p[3] = 0;
				p[4] = p[5] = 0;
				p[6] = in_bytes >> 8;
				p[7] = in_bytes & 0xff;
				uint64_t be = htobe64(id);
				memcpy(p + NN_SRV_OFF_ID, &be, 8);
				memcpy(p + NN_SRV_HDR_BYTES, inputs + (id % n_inputs) * in_bytes, in_bytes);
				out_iov[k] = (struct iovec){p, NN_SRV_HDR_BYTES + in_bytes};
			}
			double at = now();
			int r = sendmmsg(fd, out, k, 0);
			if (r < 0 && errno != EAGAIN && errno != ENOBUFS) {
				fprintf(stderr, "sendmmsg: %s\n", strerror(errno));
				return 1;
			}
			for (int i = 0; i < r; i++)
				sent_at[sent + i] = at;
			if (r > 0) {
				last_send = at;
				sent += r;
			}
		}
		int got = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
		if (got <= 0 && sent >= due) {
			/* Nothing to read: sleep until a reply, or until the next
			 * request is due (open loop), or the time is up. */
			double until = end_send + timeout;
			if (!window && sent < total && t < end_send)
				until = start + sent / rate;
			else if (window && t < end_send)
				until = end_send;
			double wait = until - now();
			if (wait > 0) {
				struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
				ppoll(&pfd, 1, &ts, NULL);
			}
			got = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
		}
		double back = now();
		for (int i = 0; i < got; i++) {
			const uint8_t *p = rx[i];
			uint64_t id;
			if (in[i].msg_len < NN_SRV_OFF_SCORES) {
				other++;
				continue;
			}
			memcpy(&id, p + NN_SRV_OFF_ID, 8);
			id = be64toh(id);
			if (id >= sent || answered[id]) {
				other++;
				continue;
			}
			answered[id] = 1;
			rtt[received++] = (back - sent_at[id]) * 1e6;
			if (p[NN_SRV_OFF_STATUS] != NN_SRV_OK || p[NN_SRV_OFF_CLASS] != classes[id % n_inputs])
				mismatched++;
		}
		if ((sent >= total || back >= end_send) &&
		    (received == sent || back > end_send + timeout))
			break;
		if (back > end_send + timeout)
			break;
	}
	(void)t;
	double elapsed = last_send - start; /* the sending span: sent / elapsed is the rate reached */
	qsort(rtt, received, sizeof(float), by_value);
#define AT(q) (received ? rtt[(size_t)((received - 1) * (q))] : 0.0)
	printf("{\"sent\": %zu, \"received\": %zu, \"lost\": %zu, \"mismatched\": %zu, "
	       "\"stray\": %zu, \"seconds\": %.4f, \"rtt_us\": {\"p50\": %.1f, \"p90\": %.1f, "
	       "\"p99\": %.1f, \"max\": %.1f}}\n", sent, received, sent - received, mismatched, other,
	       elapsed, AT(0.5), AT(0.9), AT(0.99), AT(1.0));
	return 0;
}
