/* Frames a CPUMAP dropped because its queue to the target CPU was full
 * (traffic/bench_stages.py): the xdp_cpumap_enqueue tracepoint, read as a
 * raw tracepoint (no tracefs needed), counted per CPUMAP id, so another
 * program's CPUMAP on the same machine never mixes in. */

/* TP_PROTO(int map_id, unsigned int processed, unsigned int drops, int to_cpu) */
BPF_HASH(cpumap_drops, __u32, __u64, 64);

RAW_TRACEPOINT_PROBE(xdp_cpumap_enqueue)
{
	__u32 id = (__u32)ctx->args[0];
	__u64 drops = (__u32)ctx->args[2];
	if (!drops)
		return 0;
	__u64 zero = 0;
	cpumap_drops.insert(&id, &zero); /* no-op when present: no lost update */
	__u64 *v = cpumap_drops.lookup(&id);
	if (v)
		__sync_fetch_and_add(v, drops);
	return 0;
}
