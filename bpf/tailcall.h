/* Programs of one interface that hand packets to each other by tail call,
 * and the maps they share.
 *
 * A program array (BPF_MAP_TYPE_PROG_ARRAY) holds XDP programs loaded apart
 * from the caller, each compiled for its own shape; the loader fills its
 * slots (loader/progarray.py).  A tail call replaces the running program
 * with the slot's, on the same frame, and never returns; one that finds its
 * slot empty (or the slot past the array) returns, and the caller goes on,
 * so an empty slot is a fallback for the packet, never an error.  The
 * kernel keeps a program array's slots only while user space holds the map
 * (a pin or a descriptor): the loader pins it.
 *
 * A program built with NN_PIN_DIR (a string: a pin folder in bpffs) opens
 * the maps declared NN_SHARED at NN_PIN_DIR/<name> instead of making its
 * own, so the programs of one interface count in one place and read one
 * configuration.  The loader makes those pins before it builds such a
 * program; BCC opens them while it loads it. */
#ifndef XDPNN_TAILCALL_H
#define XDPNN_TAILCALL_H

/* A caller tail-calls slot k with `name.call(ctx, k)`, which BCC rewrites
 * into bpf_tail_call(ctx, map, k) (only outside macros). */
#define NN_PROG_ARRAY(name, slots) BPF_PROG_ARRAY(name, slots)

#ifdef NN_PIN_DIR
#define NN_SHARED(type, leaf, name, entries) \
	BPF_TABLE_PINNED(type, __u32, leaf, name, entries, NN_PIN_DIR "/" #name)
#else
#define NN_SHARED(type, leaf, name, entries) BPF_TABLE(type, __u32, leaf, name, entries)
#endif

#endif
