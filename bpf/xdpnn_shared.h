/* What the XDP program and the loader share: map value layouts and the ids
 * that index them.  Plain C, no BCC macros, so both sides read one truth.
 * loader/maps.py mirrors these structs with ctypes and checks the sizes
 * against what BCC compiled at every attach. */
#ifndef XDPNN_SHARED_H
#define XDPNN_SHARED_H

#define NN_MAX_CLASSES 64

/* Input modes, chosen at compile time by -DNN_INPUT_MODE. */
#define NN_INPUT_PAYLOAD 0 /* the first bytes of a UDP payload to a port */
#define NN_INPUT_HEADERS 1 /* a feature record built from L3/L4 headers */

/* What happens to a classified packet, per class (nn_config.action). */
enum nn_action {
	NN_ACT_COUNT = 0,    /* count only: the packet takes the default path */
	NN_ACT_PASS = 1,     /* hand it to the local network stack */
	NN_ACT_DROP = 2,
	NN_ACT_REDIRECT = 3, /* send it out of the forwarding peer */
};

/* Why a packet was or was not classified (nn_counters.input). */
enum nn_input_result {
	NN_IN_CLASSIFIED = 0,
	NN_IN_OTHER,         /* valid IPv4 but not a request (payload mode) */
	NN_IN_NON_IP,        /* an EtherType other than IPv4, IPv6 or VLAN */
	NN_IN_IPV6,
	NN_IN_VLAN,          /* 802.1Q / 802.1ad tagged */
	NN_IN_TRUNCATED,     /* the frame ends inside a header it declares */
	NN_IN_MALFORMED,     /* a header field is impossible (IHL < 5, ...) */
	NN_IN_FRAGMENT,      /* IPv4 fragment: no complete L4 to read */
	NN_IN_SHORT_PAYLOAD, /* a request with fewer payload bytes than inputs */
	NN_IN__COUNT,
};

/* Set by the loader, read by every packet.  Slot 0 of a one-entry array. */
struct nn_config {
	__u32 active_slot;          /* which weight slot inference reads (0/1) */
	__u32 udp_port;             /* payload mode: UDP destination port */
	__u32 ifindex[2];           /* forwarding pair; in on [i], out on devmap slot 1-i */
	__u8 action[NN_MAX_CLASSES]; /* enum nn_action, per class */
};

/* Per-CPU counters, one entry; userspace sums over CPUs.  Each CPU writes
 * only its own copy, so plain increments need no atomics. */
struct nn_counters {
	__u64 input[NN_IN__COUNT];      /* enum nn_input_result */
	__u64 verdict[5];               /* indexed by XDP action: aborted, drop, pass, tx, redirect */
	__u64 class_packets[NN_MAX_CLASSES];
};

#endif
