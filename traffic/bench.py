"""`xdpnn bench`: the forwarding rate while the datapath runs inference,
next to the same datapath without inference, in one run.

    sender [g0] --veth--> [d0] host under test [d1] --veth--> [s0] receiver
    live-frames generator   bpf/xdpnn.c variant, DEVMAP     XDP count + drop
    (and the reflection      redirect d0 -> d1 (or XDP_TX
     counter, XDP drop)      back to g0 when reflecting)

Every variant is compiled once; then trial after trial each is attached in
turn and measured, so drift hits all of them alike and each trial gives a
ratio measured side by side.  Packet rates are measured with bpf_stats off,
per-packet cost (bpf_stats) in separate trials.  docs/benchmarks.md says
how to read the figures.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdpnn.loader import bpf_sys, datapath, layout
from xdpnn.loader.errors import UsageError
from xdpnn.loader.netns import check_netns_name, netns, write_sysfs_net
from xdpnn.trainer import reference
from xdpnn.trainer.model import Model, ModelError, random_model
from xdpnn.traffic import baseline, forwarder, livegen, packets
from xdpnn.traffic.sink import Sink
from xdpnn.traffic.topology import Topology

DEFAULT_SHAPES = ("256-32-16-2", "784-64-32-10", "784-256-256-10")
PORT = 9595
PORTS = ("d0", "d1")
MAX_CPUS = 2  # the scaling trials use CPUs 0 .. MAX_CPUS - 1
TEST_RUN_FRAMES = 8  # different inputs per BPF_PROG_TEST_RUN figure


@dataclass
class Settings:
    shapes: list[str] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    model_files: list[str] = field(default_factory=list)
    trials: int = 5
    trial_seconds: float = 1.0      # per variant per trial, packet rates
    stats_seconds: float = 0.5      # per variant per trial, bpf_stats
    test_run_repeat: int = 20000    # BPF_PROG_TEST_RUN repeat per frame
    baseline_inputs: int = 4096
    baseline_seconds: float = 0.05  # per user-space baseline per model per trial
    napi: str = "softirq"
    netns_prefix: str = ""          # default xdpnn-bench-<pid>
    scaling: bool = True            # 1 CPU against all of them (up to MAX_CPUS)

    @classmethod
    def quick(cls, **kw) -> "Settings":
        return cls(trials=5, trial_seconds=0.2, stats_seconds=0.1, test_run_repeat=2000,
                   baseline_inputs=1024, baseline_seconds=0.01, **kw)


@dataclass
class Variant:
    """One program on the host under test: what it is and where its frames end up."""
    name: str
    kind: str                  # forward | reflect | inference
    model: Model
    defines: tuple[str, ...] = ()
    prog: object = None
    receiver: object = None


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "trials": [float(v) for v in values]}


# What to use for a model bench cannot measure: one over one program's budget.
STAGED = ("bench measures one-program datapaths: `xdpnn verify --model F` gives its ns per "
          "input through the stages, `xdpnn plan --model F --stages N --measure` each stage's")


def shape_model(shape: str) -> Model:
    """The bench's model of a --shape: random weights, seed 1."""
    try:
        return random_model([int(x) for x in shape.split("-")], seed=1)
    except (ValueError, ModelError) as e:
        raise UsageError(f"--shape {shape}: {e}") from None


def load_models(s: Settings) -> list[tuple[str, Model]]:
    """(name, model) for each shape (random weights, seed 1) and model file."""
    models = [(shape, shape_model(shape)) for shape in s.shapes]
    for path in s.model_files:
        m = datapath.load_model(path)
        datapath.binary_inputs_only(m, path, "bench")
        models.append((f"{m.shape} ({Path(path).name})", m))
    for name, m in models:
        datapath.one_program_only(m, None if name == m.shape else name, "bench", STAGED)
    if not models:
        raise UsageError("bench: no model to measure (give --shape or --model)")
    return models


def environment(s: Settings, packet_bytes: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"kernel": platform.release(), "cpu_model": cpu, "cpus": os.cpu_count(),
            "xdp_mode": forwarder.XDP_MODE, "napi": s.napi, "packet_bytes": packet_bytes,
            "generator": "live frames (BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES), "
                         f"{livegen.SLOTS} different inputs cycled",
            "trials": s.trials, "trial_seconds": s.trial_seconds,
            "stats_seconds": s.stats_seconds, "test_run_repeat": s.test_run_repeat,
            "baseline_inputs": s.baseline_inputs, "baseline_seconds": s.baseline_seconds}


def set_threaded_napi(t: Topology) -> None:
    """Moves every port's NAPI into a kernel thread, so the host under test
    can run on the other CPU than the generator (possible once XDP is on)."""
    for ns, dev in ((t.gen, "g0"), (t.dut, "d0"), (t.dut, "d1"), (t.sink, "s0")):
        with netns(ns):
            write_sysfs_net(dev, "threaded", "1")


def rate_trial(v: Variant, gen: livegen.LiveGen, t: Topology, seconds: float) -> tuple:
    """(received packets/s, frames sent but not received) with v attached."""
    with forwarder.attached(v.prog, t.dut, PORTS):
        gen.send(4096)  # warm-up: caches, page pools, NAPI
        time.sleep(0.02)
        before = v.receiver.counts()[0]
        sent = gen.send(1 << 40, max_seconds=seconds)
        time.sleep(0.02)  # what is still in a veth ring arrives
        received = v.receiver.counts()[0] - before
    return received / sent.seconds, sent.frames - received


def multi_send(gen: livegen.LiveGen, cpus: list[int], seconds: float,
               count: int = 1 << 40) -> tuple:
    """One generator thread pinned to each CPU, started together: a frame
    sent on CPU c is forwarded on c (veth queue c), so the CPUs forward side
    by side.  Returns (frames sent, wall seconds from the start to the last
    thread's end, CPU seconds of the threads): the forwarding and inference
    run in softirq on the sending thread, so its CPU time is theirs too."""
    done: list = [None] * len(cpus)
    start = threading.Barrier(len(cpus) + 1)

    def work(i: int, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        start.wait()
        cpu0 = time.thread_time()
        sent = gen.send(count, max_seconds=seconds)
        done[i] = (sent.frames, time.thread_time() - cpu0)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(cpus)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.monotonic()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    if any(x is None for x in done):
        raise RuntimeError("bench: a generator thread failed (see above)")
    return sum(x[0] for x in done), wall, sum(x[1] for x in done)


def scaling_trial(v: Variant, gen: livegen.LiveGen, t: Topology, cpus: list[int],
                  seconds: float) -> tuple[float, float]:
    """(received packets/s, received packets per CPU second of the sending
    threads) with v attached and generators on `cpus`."""
    with forwarder.attached(v.prog, t.dut, PORTS):
        multi_send(gen, cpus, 1.0, count=4096)  # warm-up on every CPU: caches, NAPI
        time.sleep(0.02)
        before = v.receiver.counts()[0]
        _, wall, cpu_seconds = multi_send(gen, cpus, seconds)
        time.sleep(0.02)
        received = v.receiver.counts()[0] - before
    return received / wall, received / max(cpu_seconds, 1e-9)


def machine_load() -> dict:
    """How busy the machine was: load averages, and the share of CPU time
    spent outside the idle task since the last call (all processes)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return {"loadavg": [float(x) for x in open("/proc/loadavg").read().split()[:3]],
            "jiffies_total": sum(fields), "jiffies_idle": idle}


def busy_share(a: dict, b: dict) -> float:
    total = b["jiffies_total"] - a["jiffies_total"]
    return 1 - (b["jiffies_idle"] - a["jiffies_idle"]) / total if total else 0.0


def stats_trial(v: Variant, gen: livegen.LiveGen, t: Topology, seconds: float) -> float:
    """ns per packet of v's program from bpf_stats (on for this trial)."""
    with forwarder.attached(v.prog, t.dut, PORTS):
        gen.send(4096)
        a = bpf_sys.prog_info(v.prog.prog_fd)
        gen.send(1 << 40, max_seconds=seconds)
        b = bpf_sys.prog_info(v.prog.prog_fd)
    return (b.run_time_ns - a.run_time_ns) / max(b.run_cnt - a.run_cnt, 1)


def test_run_ns(v: Variant, frames: list[bytes], repeat: int) -> float:
    """Average ns of v's program per request, BPF_PROG_TEST_RUN, no interface."""
    return float(np.mean([bpf_sys.test_run(v.prog.prog_fd, f, repeat=repeat)[1]
                          for f in frames]))


def run(s: Settings) -> dict:
    """Measures everything; returns the result document (traffic/bench_report.py)."""
    started = time.time()
    named = load_models(s)
    models = [m for _, m in named]
    n_bytes = max((m.sizes[0] + 7) // 8 for m in models)
    payloads = livegen.random_payloads(n_bytes, seed=7)
    frame_bytes = len(packets.request(payloads[0], PORT))
    variants = ([Variant("forward", "forward", models[0], ("NN_FORWARD_ONLY",)),
                 Variant("reflect", "reflect", models[0], ("NN_FORWARD_ONLY", "NN_REFLECT"))] +
                [Variant(name, "inference", m) for name, m in named])
    rates = {v.name: [] for v in variants}
    lost = {v.name: 0 for v in variants}
    per_packet = {v.name: [] for v in variants}
    c = baseline.CBaselines()
    try:
        base = {name: c.runners(m, baseline_inputs(m, payloads, s)) for name, m in named}
    finally:
        c.close()  # deletes the library files; the loaded libraries stay mapped
    base_ns = {name: {b: [] for b in runners} for name, runners in base.items()}

    n_cpus = min(MAX_CPUS, len(os.sched_getaffinity(0))) if s.scaling else 1
    cpu_sets = [list(range(n)) for n in (1, n_cpus)] if n_cpus > 1 else []
    scale_rates = {v.name: {len(c): [] for c in cpu_sets} for v in variants
                   if v.kind != "reflect"}
    scale_per_cpu = {name: {n: [] for n in by} for name, by in scale_rates.items()}
    load_start = machine_load()
    with Topology(s.netns_prefix or f"xdpnn-bench-{os.getpid()}", queues=n_cpus) as t:
        progress(f"bench: {t.gen} [g0] -> [d0] {t.dut} [d1] -> [s0] {t.sink}, "
                 f"{frame_bytes}-byte requests")
        with Sink(t.sink, "s0", drop=True) as rx, Sink(t.gen, "g0", drop=True) as back, \
                livegen.LiveGen(t.gen, "g0", payloads, PORT) as gen:
            try:
                for v in variants:
                    progress(f"  compile {v.name}")
                    v.prog = forwarder.build(v.model, t.dut, PORTS, PORT, v.defines)
                    v.receiver = back if v.kind == "reflect" else rx
                if s.napi == "threaded":
                    with forwarder.attached(variants[0].prog, t.dut, PORTS):
                        set_threaded_napi(t)
                for k in range(s.trials):
                    for v in rotated(variants, k):
                        pps, missing = rate_trial(v, gen, t, s.trial_seconds)
                        rates[v.name].append(pps)
                        lost[v.name] += missing
                    progress(f"  rates, trial {k + 1}/{s.trials}: " + ", ".join(
                        f"{v.name} {rates[v.name][-1] / 1e6:.2f}" for v in variants) + " Mpps")
                # Scaling: 1 CPU and n CPUs in the same trial, each variant in
                # turn, so the ratio compares rates taken a moment apart.
                scaled = [v for v in variants if v.name in scale_rates]
                for k in range(s.trials if cpu_sets else 0):
                    for v in rotated(scaled, k):
                        for cpus in (cpu_sets if k % 2 == 0 else cpu_sets[::-1]):
                            pps, per_cpu_s = scaling_trial(v, gen, t, cpus, s.trial_seconds)
                            scale_rates[v.name][len(cpus)].append(pps)
                            scale_per_cpu[v.name][len(cpus)].append(per_cpu_s)
                    progress(f"  scaling, trial {k + 1}/{s.trials}: " + ", ".join(
                        f"{v.name} " + "/".join(f"{scale_rates[v.name][len(c)][-1] / 1e6:.2f}"
                                                for c in cpu_sets) for v in scaled) +
                        f" Mpps on {'/'.join(str(len(c)) for c in cpu_sets)} CPUs")
                with bpf_sys.bpf_stats():
                    for k in range(s.trials):
                        for v in rotated(variants, k):
                            per_packet[v.name].append(stats_trial(v, gen, t, s.stats_seconds))
                progress("  bpf_stats, ns per packet: " + ", ".join(
                    f"{v.name} {np.median(per_packet[v.name]):.0f}" for v in variants))
                classified = {v.name: all_classified(v) for v in variants
                              if v.kind == "inference"}
                frames = [packets.request(p, PORT) for p in payloads[:TEST_RUN_FRAMES]]
                # ns per inference, XDP and user space in the same trial, so
                # that a ratio compares figures taken a moment apart.
                run_ns = {v.name: [] for v in variants}
                for k in range(s.trials):
                    for v in rotated(variants, k):
                        run_ns[v.name].append(test_run_ns(v, frames, s.test_run_repeat))
                    for name, runners in base.items():
                        for b, r in runners.items():
                            base_ns[name][b].append(r.ns(s.baseline_seconds))
                progress("  BPF_PROG_TEST_RUN, ns per request: " + ", ".join(
                    f"{v.name} {np.median(run_ns[v.name]):.0f}" for v in variants))
                for name, runners in base_ns.items():
                    progress(f"  user space {name}, ns per inference: " + ", ".join(
                        f"{b} {np.median(ns):.0f}" for b, ns in runners.items()))
            finally:
                for v in variants:
                    if v.prog:
                        v.prog.close()

    configs = []
    for v in variants:
        ratios = [r / f for r, f in zip(rates[v.name], rates["forward"])]
        configs.append({"config": v.name, "kind": v.kind,
                        "model": v.model.shape if v.kind == "inference" else None,
                        "pps": summary(rates[v.name]), "ratio_to_forward": summary(ratios),
                        "not_received": lost[v.name],
                        "bpf_stats_ns_per_packet": summary(per_packet[v.name]),
                        "test_run_ns_per_packet": summary(run_ns[v.name])})
    inference = [dict(inference_figures(v.name, run_ns[v.name], base[v.name],
                                        base_ns[v.name]),
                      weight_bytes=weight_bytes(m), xdp_classified_every_request=classified[v.name])
                 for m, v in zip(models, variants[2:])]
    env = environment(s, frame_bytes)
    env["c_compiler"], env["simd"] = c.compiler, c.simd
    load_end = machine_load()
    env["load"] = {"loadavg_start": load_start["loadavg"], "loadavg_end": load_end["loadavg"],
                   "busy_share": round(busy_share(load_start, load_end), 3)}
    scaling = []
    if cpu_sets:
        n = len(cpu_sets[-1])
        for name, by_cpus in scale_rates.items():
            one, many = by_cpus[1], by_cpus[n]
            entry = {"config": name, "cpus": n, "pps_1_cpu": summary(one),
                     f"pps_{n}_cpus": summary(many),
                     "speedup": summary([b / a for a, b in zip(one, many)]),
                     "pps_per_cpu_second_1_cpu": summary(scale_per_cpu[name][1]),
                     f"pps_per_cpu_second_{n}_cpus": summary(scale_per_cpu[name][n]),
                     # n x the per-CPU-second rate over 1 CPU's: the speedup
                     # free CPUs would give, other jobs' share taken out.
                     "speedup_cpu_time": summary(
                         [n * b / a for a, b in zip(scale_per_cpu[name][1],
                                                    scale_per_cpu[name][n])])}
            if name != "forward":
                fwd = scale_rates["forward"]
                entry["ratio_to_forward_1_cpu"] = summary(
                    [a / f for a, f in zip(one, fwd[1])])
                entry[f"ratio_to_forward_{n}_cpus"] = summary(
                    [a / f for a, f in zip(many, fwd[n])])
            scaling.append(entry)
    return {"schema": "xdpnn-bench/3", "started": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "environment": env,
            "forwarding": configs, "inference": inference, "scaling": scaling}


def rotated(variants: list[Variant], k: int) -> list[Variant]:
    """Trial k starts with a different variant, so none always goes first."""
    k %= len(variants)
    return variants[k:] + variants[:k]


def all_classified(v: Variant) -> bool:
    """Whether an inference variant classified every frame it saw."""
    c = forwarder.counters(v.prog)
    return bool(c["input"].sum() > 0 and c["input"][0] == c["input"].sum())


def weight_bytes(m: Model) -> int:
    return int(layout.model_words(m).nbytes)


def baseline_inputs(m: Model, payloads: list[bytes], s: Settings) -> np.ndarray:
    """The generator's inputs as bit rows, cycled to s.baseline_inputs rows."""
    raw = np.stack([reference.bits_from_bytes(p, m.sizes[0]) for p in payloads])
    return np.resize(raw, (s.baseline_inputs, m.sizes[0]))


def inference_figures(name: str, xdp: list[float], runners: dict, ns: dict) -> dict:
    """One model's ns per inference: XDP, each baseline, and XDP over the
    fastest scalar baseline and the fastest overall (by median), per trial."""
    def fastest(names):
        return min(names, key=lambda b: np.median(ns[b]))

    scalar = fastest([b for b, r in runners.items() if r.kind == "scalar"])
    best = fastest(list(runners))
    return {"model": name, "xdp_ns": summary(xdp),
            "baselines": {b: {"kind": r.kind, "build": r.build, "ns": summary(ns[b])}
                          for b, r in runners.items()},
            "baselines_agree": True,  # checked on every input before timing, else an error
            "fastest_scalar": scalar, "fastest": best,
            "xdp_over_fastest_scalar": summary([x / b for x, b in zip(xdp, ns[scalar])]),
            "xdp_over_fastest": summary([x / b for x, b in zip(xdp, ns[best])])}


# The suffixes every section adds to --netns-prefix (traffic/topology.py):
# forwarding and --stages make -gen, -dut and -sink, --serving -cli and -srv.
NETNS_SUFFIXES = ("-gen", "-dut", "-sink", "-cli", "-srv")


def netns_prefix(prefix: str | None) -> str | None:
    """--netns-prefix checked once for every section, before anything is made:
    each name a section makes from it must be a valid namespace name."""
    if not prefix:
        return None
    try:
        for suffix in NETNS_SUFFIXES:
            check_netns_name(prefix + suffix)
    except UsageError as e:
        raise UsageError(f"bench: --netns-prefix {prefix!r}: {e}") from None
    return prefix


def command(args) -> None:
    """`xdpnn bench`: measure, write the results directory, print the tables."""
    import json

    from xdpnn.traffic import bench_report
    prefix = netns_prefix(args.netns_prefix)
    if getattr(args, "serving", False):
        from xdpnn.traffic import bench_serving
        return bench_serving.command(args, progress, prefix)
    if getattr(args, "stages", False):
        from xdpnn.traffic import bench_stages
        return bench_stages.command(args, progress, prefix)
    s = Settings.quick() if args.quick else Settings()
    if args.shape:
        s.shapes = args.shape
    s.model_files = args.model
    s.napi = args.napi
    s.scaling = not args.no_scaling
    s.netns_prefix = prefix or ""
    if args.trials is not None:
        s.trials = args.trials
    if args.seconds is not None:
        s.trial_seconds = args.seconds
    out_dir = Path(args.out or time.strftime("results/bench-%Y%m%d-%H%M%S"))
    result = run(s)
    for note in bench_report.write(result, out_dir):
        progress(note)
    progress(f"bench: wrote {out_dir}/bench.json, bench.md"
             f"{', bench.png' if (out_dir / 'bench.png').exists() else ''} "
             f"in {result['seconds']} s")
    print(json.dumps(result, indent=1) if args.json else bench_report.markdown(result))
