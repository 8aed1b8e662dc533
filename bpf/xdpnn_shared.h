/* What the XDP program and the loader share: sizes, the ids that index the
 * counters and configuration, and the map value layouts.  Plain C, no BCC
 * macros, so both sides read one truth: the program #includes it, and
 * Python parses its #defines and enums (bpf/shared.py), so no number here
 * is written a second time.  Keep it to what that parser reads: integer
 * #defines (literals and sums of earlier ones) and enums. */
#ifndef XDPNN_SHARED_H
#define XDPNN_SHARED_H

#define NN_MAX_CLASSES 64 /* a power of two: the program masks class ids with it */

/* Input modes, chosen at compile time by -DNN_INPUT_MODE. */
#define NN_INPUT_PAYLOAD 0 /* the first bytes of a UDP payload to a port */
#define NN_INPUT_HEADERS 1 /* a feature record built from L3/L4 headers */
#define NN_INPUT_FLOW 2    /* a record of the flow's first packets (bpf/flow.h) */

/* Headers mode: the fixed 32-byte feature record (docs/datapath.md). */
#define NN_FEATURE_BYTES 32
#define NN_FEATURE_PAYLOAD 16 /* L4 payload bytes copied into the record */

/* Flow mode (docs/datapath.md, "Flow mode"): the 32-byte flow record keeps
 * the first NN_FLOW_PACKETS packets of a flow; the class is final at the
 * last of them or at a TCP FIN or RST, and later packets take it without
 * inference.  A flow idle longer than NN_FLOW_TIMEOUT_MS starts over. */
#define NN_FLOW_PACKETS 8
#define NN_FLOW_PAYLOAD 8        /* payload bytes kept of each direction */
#define NN_FLOW_TIMEOUT_MS 30000
#define NN_FLOW_NO_CLASS 255

/* Flow-table events (nn_counters.flow). */
enum nn_flow_event {
	NN_FLOW_NEW = 0,    /* a flow entered the table (evicted ones come back as new) */
	NN_FLOW_EXPIRED,    /* a packet found its flow idle too long: the flow started over */
	NN_FLOW_FINAL,      /* a flow's class became final */
	NN_FLOW_CACHED,     /* packets that took their flow's final class without inference */
	NN_FLOW__COUNT,
};

/* The attach record (JSON) in nn_meta; written and read by the loader only. */
#define NN_META_BYTES 16384

/* nn_counters has one entry per ingress side of the forwarding pair:
 * packets that arrived on nn_config.ifindex[0] count in entry 0, those
 * that arrived on ifindex[1] (the peer) in entry 1. */
#define NN_SIDES 2

/* nn_tx_port slots: 0 and 1 are the forwarding pair; from NN_TX_TARGETS on,
 * the interfaces that classes are redirected to (nn_config.tx_slot). */
#define NN_TX_TARGETS 2
#define NN_TX_SLOTS (NN_TX_TARGETS + NN_MAX_CLASSES)

/* What happens to a classified packet, per class (nn_config.action). */
enum nn_action {
	NN_ACT_COUNT = 0,    /* count only: the packet takes the default path */
	NN_ACT_PASS = 1,     /* hand it to the local network stack */
	NN_ACT_DROP = 2,
	NN_ACT_REDIRECT = 3, /* out of the class's target (nn_config.tx_slot) */
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
	NN_IN_REQUEST_ERROR, /* serving: a request answered or dropped with an error status */
	NN_IN__COUNT,
};

/* What the program returned (nn_counters.verdict): the XDP action codes,
 * in their order (xdpnn.c checks them against enum xdp_action). */
enum nn_verdict {
	NN_VERDICT_ABORTED = 0,
	NN_VERDICT_DROP,
	NN_VERDICT_PASS,
	NN_VERDICT_TX,
	NN_VERDICT_REDIRECT,
	NN_VERDICT__COUNT,
};

/* Set by the loader, read by every packet.  Slot 0 of a one-entry array. */
struct nn_config {
	__u32 udp_port;              /* payload mode: UDP destination port */
	__u32 ifindex[2];            /* forwarding pair; in on [i], out on devmap slot 1-i */
	__u8 action[NN_MAX_CLASSES]; /* enum nn_action, per class */
	__u8 tx_slot[NN_MAX_CLASSES]; /* NN_ACT_REDIRECT: the class's nn_tx_port slot */
	__u32 port_models;           /* models chosen by destination port (model add --port) */
};

/* Per-CPU counters, one entry per ingress side; userspace sums over CPUs.
 * Each CPU writes only its own copy, so plain increments need no atomics. */
struct nn_counters {
	__u64 input[NN_IN__COUNT];       /* enum nn_input_result */
	__u64 verdict[NN_VERDICT__COUNT]; /* enum nn_verdict */
	__u64 class_packets[NN_MAX_CLASSES];
	__u64 flow[NN_FLOW__COUNT];        /* flow mode: enum nn_flow_event */
	/* Flow mode: flows by their latest class.  A flow that changes class
	 * adds one here and takes one there, maybe on another CPU: a CPU's
	 * value can wrap below zero, the sum over CPUs is right. */
	__u64 class_flows[NN_MAX_CLASSES];
};

/* Serving (attach --serve, docs/serving.md): a request is a UDP datagram to
 * the port whose payload is a NN_SRV_HDR_BYTES header, then the input bits;
 * the program answers it with XDP_TX.  Multi-byte fields are big endian.
 * The NN_SRV_OFF_* are byte offsets in the UDP payload (xdpnn.c checks them
 * against the structs below; Python reads them here). */
#define NN_SRV_MAGIC 22606     /* 0x584E, "XN" */
#define NN_SRV_VERSION 1
#define NN_SRV_HDR_BYTES 16
#define NN_SRV_OFF_MAGIC 0     /* u16 */
#define NN_SRV_OFF_VERSION 2   /* u8 */
#define NN_SRV_OFF_FLAGS 3     /* u8: NN_SRV_F_* */
#define NN_SRV_OFF_MODEL 4     /* u16: model id; 0 is the attached model */
#define NN_SRV_OFF_LENGTH 6    /* u16: bytes after the header */
#define NN_SRV_OFF_ID 8        /* u64: request id, echoed in the reply */
/* The reply: the request's header (flags | NN_SRV_F_REPLY, our version and
 * magic), then status, class, the number of scores and the scores (s64). */
#define NN_SRV_OFF_STATUS 16   /* u8: enum nn_srv_status */
#define NN_SRV_OFF_CLASS 17    /* u8: NN_SRV_NO_CLASS unless the status is ok */
#define NN_SRV_OFF_NSCORES 18  /* u16: 0, or the model's classes with NN_SRV_F_SCORES */
#define NN_SRV_OFF_SCORES 20   /* s64 each: scale * a + bias of each class */
#define NN_SRV_F_SCORES 1      /* request: append the output scores */
#define NN_SRV_F_REPLY 128     /* set in replies; a datagram with it is never answered */
#define NN_SRV_NO_CLASS 255
#define NN_SRV_TTL 64          /* IPv4 TTL and IPv6 hop limit of replies */
/* nn_serve has one entry per model id below NN_SRV_MODELS, and one more for
 * everything else: higher ids, and errors found before the model id is read. */
#define NN_SRV_MODELS 16

/* A reply's status; the last three are never sent (the frame is dropped). */
enum nn_srv_status {
	NN_SRV_OK = 0,
	NN_SRV_BAD_MAGIC,
	NN_SRV_BAD_VERSION,
	NN_SRV_UNKNOWN_MODEL,  /* no model has this id */
	NN_SRV_SHORT_INPUT,    /* the length field, or the datagram, is short of the model's inputs */
	NN_SRV_SHORT_HEADER,   /* dropped: fewer payload bytes than the header */
	NN_SRV_NOT_REQUEST,    /* dropped: NN_SRV_F_REPLY is set */
	NN_SRV_NO_ROOM,        /* dropped: the frame could not grow to the reply's length */
	NN_SRV__COUNT,
};

/* Per-CPU serving counters, one entry per model id (NN_SRV_MODELS + 1). */
struct nn_serve_counters {
	__u64 requests;               /* datagrams to the port with a UDP payload */
	__u64 replies;                /* answered with XDP_TX (ok and error replies) */
	__u64 status[NN_SRV__COUNT];  /* enum nn_srv_status */
};

/* Stages (docs/partitioning.md): a model cut into programs of contiguous
 * layers that hand the activations on in a struct nn_stage_act.  Layers
 * are numbered 0 .. hidden layers, the last being the output layer; a cut
 * may also fall inside a hidden layer, between groups of 64 neurons. */
#define NN_STAGE_MAX_WORDS 32 /* activations of up to 2048 neurons */
#define NN_STAGE_SLOTS 2      /* nn_stage entries: stage s reads s % 2, writes the other */
#define NN_STAGE_HEADER 16    /* digest, next_layer, next_group, bits: the front of a carrying frame */
#define NN_STAGE_QSIZE 2048   /* frames a CPUMAP entry queues for its CPU */
/* Hops: a carrying frame on the wire has an outer Ethernet header of this
 * EtherType (IEEE 802 local experimental 1) in front of the stage header. */
#define NN_STAGE_ETHERTYPE 0x88B5
#define NN_STAGE_OUTER 14     /* that outer Ethernet header's bytes */
/* Bytes a stage may put in front of a frame: XDP frames on veth, CPUMAP
 * and test runs have 256 bytes of headroom, of which struct xdp_frame
 * takes 40 (bpf_xdp_adjust_head refuses to go below it); 24 are left for
 * XDP metadata.  A cut whose hand-off needs more runs by tail calls only
 * (loader/plan.py keeps packet-carried cuts within it). */
#define NN_STAGE_ROOM 192

/* Why a stage refused or lost a packet (nn_stage_err, per CPU). */
enum nn_stage_error {
	NN_STAGE_BAD_DIGEST = 0, /* activations of another model: dropped */
	NN_STAGE_BAD_LAYER,      /* activations for another layer: dropped */
	NN_STAGE_BAD_BITS,       /* an activation count this layer does not take: dropped */
	NN_STAGE_NO_NEXT,        /* the next stage's slot was empty: default path (tail
	                          * call) or dropped (CPUMAP: the frame carries activations) */
	NN_STAGE_TRUNCATED,      /* a packet-carried frame shorter than its header says: dropped */
	NN_STAGE_NO_ROOM,        /* the frame could not grow to carry activations: default path */
	NN_STAGE__COUNT,
};

/* The activations carried from a stage to the next.  Little endian words;
 * digest: the first 8 bytes of the model's sha256 over sizes and weights
 * (loader/stages.py digest()), read as a little-endian u64. */
struct nn_stage_act {
	__u64 digest;
	__u16 next_layer;              /* the layer that takes these activations */
	__u16 next_group;              /* its first group of 64 neurons still to run (0: all) */
	__u32 bits;                    /* activations: that layer's input count */
	__u64 w[NN_STAGE_MAX_WORDS];   /* packed as the model's inputs (docs/model-format.md) */
	/* next_group > 0: the layer's outputs of groups 0 .. next_group - 1,
	 * packed as its output (on the wire right after the words in use). */
	__u64 done[NN_STAGE_MAX_WORDS];
};

#endif
