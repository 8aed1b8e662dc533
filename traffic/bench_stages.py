"""`xdpnn bench --stages`: one model on one CPU against the same model cut
by the planner into two stages on two CPUs (CPUMAP), with the planner's
prediction beside each measured rate.

    sender [g0] --veth--> [d0] host under test [d1] --veth--> [s0] receiver
    live frames, pinned    stage 0 on CPU 0 (receives)          XDP count
    to CPU 0               --CPUMAP--> stage 1 on CPU 1, forwards to d1

(a) one_cpu: the whole model as one program (tail-call stages where one
program cannot verify it), everything on CPU 0.  (b) two_cpus: stage 0 on
CPU 0, stage 1 on CPU 1.  The measured rate is frames the last stage
counted (its class counters) per second of sending; lost frames are those
sent but not counted, with the CPUMAP queue drops (tracepoint) and veth
drops (ethtool) that explain them.  Plain forwarding and a calibration
model give the per-frame costs outside the layers (loader/plan.py rates():
path and hand-off), measured in the same run.  docs/benchmarks.md,
"Stages across CPUs", explains the figures.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from xdpnn.bpf.shared import DEFINES
from xdpnn.loader import compile, plan, stages
from xdpnn.loader.compile import captured_stderr, import_bcc
from xdpnn.loader.errors import UsageError
from xdpnn.trainer import reference
from xdpnn.trainer.model import Model, random_model
from xdpnn.traffic import bench, forwarder, livegen, packets
from xdpnn.traffic.sink import Sink
from xdpnn.traffic.topology import Topology

SHAPES = ("784-256-256-10", "784-1024-1024-1024-10")
QUICK_SHAPES = ("784-64-32-10",)
# The calibration model: a heavy first layer, light later ones, so that with
# two stages CPU 0 (generator, stage 0, hand-off) is the slower side and the
# rate shows the hand-off's cost on it (see handoff()).
CALIBRATION = "784-64-8-2"
PORT = 9595
PORTS = ("d0", "d1")
RX_CPU, NEXT_CPU = 0, 1
CHECK_BATCH = 64  # frames per batch of the exactness check (no queue fills)


@dataclass
class Settings:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    trials: int = 5
    trial_seconds: float = 1.0
    netns_prefix: str = ""

    @classmethod
    def quick(cls, **kw) -> "Settings":
        return cls(shapes=list(QUICK_SHAPES), trials=3, trial_seconds=0.2, **kw)


@dataclass
class Config:
    """One datapath measured: a model on one CPU or in two CPUMAP stages."""
    name: str
    model: Model | None        # None: plain forwarding
    mode: str                  # forward | one_cpu | two_cpus
    cuts: list | None = None
    prog: object = None
    pps: list = field(default_factory=list)
    sent: int = 0
    counted: int = 0
    received: int = 0
    cpumap_drops: int = 0
    veth_drops: int = 0
    classes_exact: bool | None = None
    kthread: int | None = None  # the CPUMAP kthread running stage 1 (two_cpus)
    cpu0_ns: list = field(default_factory=list)  # CPU ns per frame sent, sending thread
    cpu1_ns: list = field(default_factory=list)  # CPU ns per frame counted, the kthread
    softirqd_share: list = field(default_factory=list)  # of cpu0/cpu1 ns: ksoftirqd's part


def progress(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "trials": [float(v) for v in values]}


class CpumapDrops:
    """Frames CPUMAPs dropped for a full queue, by map id (bpf/cpumap_drops.c)."""

    def __init__(self):
        BPF = import_bcc()
        with captured_stderr():
            self.bpf = BPF(text=(resources.files("xdpnn.bpf") / "cpumap_drops.c").read_text())

    def read(self, map_id: int) -> int:
        t = self.bpf["cpumap_drops"]
        v = t.get(t.Key(map_id))
        return int(v.value) if v is not None else 0

    def close(self):
        self.bpf.cleanup()


def veth_drops(t: Topology) -> int:
    """XDP frames the veths of the topology dropped or could not send
    (ethtool -S, all queues, all ends)."""
    total = 0
    for ns, dev in ((t.gen, "g0"), (t.dut, "d0"), (t.dut, "d1"), (t.sink, "s0")):
        r = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-S", dev],
                           capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            name, _, value = line.strip().partition(":")
            # rx_queue_N_drops: frames a full ring refused; not xdp_drops,
            # the receiver's own XDP_DROP verdicts
            if name.endswith(("xdp_xmit_errors", "xdp_tx_errors")) or \
                    (name.endswith("_drops") and not name.endswith("xdp_drops")):
                total += int(value)
    return total


def counted(c: Config, rx: Sink) -> int:
    """Frames the last stage counted (plain forwarding: the receiver's count)."""
    if c.model is None:
        return rx.counts()[0]
    return int(compile.read_counters(c.prog.maps["nn_counters"])["class_packets"].sum())


def cpumap_kthreads() -> set[int]:
    """PIDs of the kernel threads that run CPUMAP entries on NEXT_CPU."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                comm = Path(f"/proc/{d}/comm").read_text()
            except OSError:
                continue
            if comm.startswith(f"cpumap/{NEXT_CPU}/"):
                out.add(int(d))
    return out


def ksoftirqd(cpu: int) -> int | None:
    """The PID of ksoftirqd/cpu: softirq work the kernel defers under load
    runs (and is charged) there rather than in the thread that raised it."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(d)
            except OSError:
                continue
    return None


def kthread_ns(pid: int | None) -> int:
    """CPU ns a thread has run (schedstat: softirq work it runs included)."""
    if pid is None:
        return 0
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cpumap_id(c: Config) -> int | None:
    from xdpnn.loader import bpf_sys
    if c.mode != "two_cpus":
        return None
    return bpf_sys.map_info(c.prog.maps["nn_cpus"]).id


def build(c: Config, t: Topology) -> None:
    if c.model is None:
        c.prog = forwarder.build(random_model([784, 2, 2], seed=1), t.dut, PORTS, PORT,
                                 ("NN_FORWARD_ONLY",))
        return
    if c.cuts is None:
        c.prog = forwarder.build(c.model, t.dut, PORTS, PORT)
        return
    threads = cpumap_kthreads()
    with stages.TempPins() as pins:  # later stages open stage 0's maps while they load
        c.prog = stages.build(c.model, c.cuts, pins,
                              cpus=[NEXT_CPU] if c.mode == "two_cpus" else None)
    if c.mode == "two_cpus":
        # The entry's kthread is made when it is set; another job's made at the
        # same moment would make it ambiguous (then no CPU-time figure).
        new = cpumap_kthreads() - threads
        mid = cpumap_id(c)
        named = [p for p in new if Path(f"/proc/{p}/comm").read_text().strip()
                 == f"cpumap/{NEXT_CPU}/map:{mid}"]
        c.kthread = named[0] if named else (min(new) if len(new) == 1 else None)
    try:
        forwarder.configure(c.prog, t.dut, PORTS, PORT)
    except BaseException:
        c.prog.close()
        raise


def settle(c: Config, rx: Sink, quiet: float = 0.03, limit: float = 2.0) -> None:
    """Waits until the count stops moving: frames still queued for a busy
    CPU (the CPUMAP kthread competes with other jobs) would otherwise be
    counted in the next reading."""
    last, still, deadline = counted(c, rx), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.005)
        now = counted(c, rx)
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            return


def rate_trial(c: Config, gen: livegen.LiveGen, t: Topology, rx: Sink,
               drops: CpumapDrops, seconds: float, soft: tuple) -> None:
    """One trial of c: rates, losses, and CPU ns per frame on each CPU
    (ksoftirqd's time on that CPU counted in: other jobs' deferred softirq
    work there too, so the CPU-time figures err low)."""
    with forwarder.attached(c.prog, t.dut, PORTS):
        gen.send(4096)  # warm-up: caches, page pools, the CPUMAP kthread
        settle(c, rx)
        mid = cpumap_id(c)
        before = (counted(c, rx), rx.counts()[0], drops.read(mid) if mid else 0, veth_drops(t),
                  kthread_ns(c.kthread), kthread_ns(soft[0]), kthread_ns(soft[1]))
        t0 = time.thread_time_ns()
        sent = gen.send(1 << 40, max_seconds=seconds)
        cpu0 = time.thread_time_ns() - t0
        settle(c, rx)
        after = (counted(c, rx), rx.counts()[0], drops.read(mid) if mid else 0, veth_drops(t),
                 kthread_ns(c.kthread), kthread_ns(soft[0]), kthread_ns(soft[1]))
    n = after[0] - before[0]
    c.pps.append(n / sent.seconds)
    c.sent += sent.frames
    c.counted += n
    c.received += after[1] - before[1]
    c.cpumap_drops += after[2] - before[2]
    c.veth_drops += after[3] - before[3]
    soft0, soft1 = after[5] - before[5], after[6] - before[6]
    c.cpu0_ns.append((cpu0 + soft0) / max(sent.frames, 1))
    if c.kthread is not None:
        c.cpu1_ns.append((after[4] - before[4] + soft1) / max(n, 1))
    c.softirqd_share.append((soft0 + soft1) / max(cpu0 + soft0 + soft1 +
                                                  after[4] - before[4], 1))


def check_classes(c: Config, gen: livegen.LiveGen, t: Topology, want: np.ndarray) -> bool:
    """One full cycle of the generator's inputs, in small batches that no
    queue can overflow: the class counts are the reference's exactly."""
    with forwarder.attached(c.prog, t.dut, PORTS):
        fd = c.prog.maps["nn_counters"]
        before = compile.read_counters(fd)["class_packets"].copy()
        done = 0
        for _ in range(livegen.SLOTS // CHECK_BATCH):
            gen.send(CHECK_BATCH)
            done += CHECK_BATCH
            deadline = time.monotonic() + 2.0
            while (compile.read_counters(fd)["class_packets"].sum() - before.sum() < done
                   and time.monotonic() < deadline):
                time.sleep(0.002)
        got = compile.read_counters(fd)["class_packets"] - before
    return bool((got[:len(want)] == want).all() and got[len(want):].sum() == 0)


def run(s: Settings) -> dict:
    started = time.time()
    if len(stages.online_cpus()) < 2 or not {RX_CPU, NEXT_CPU} <= os.sched_getaffinity(0):
        raise UsageError(f"bench --stages: needs CPUs {RX_CPU} and {NEXT_CPU} online and "
                         "allowed to this process")
    models = []
    for shape in s.shapes:
        models.append((shape, bench.shape_model(shape)))
        if len(models[-1][1].sizes) < 3:
            raise UsageError(f"--shape {shape}: two stages need two layers or more")
    calib = bench.shape_model(CALIBRATION)
    n_bytes = max((m.sizes[0] + 7) // 8 for _, m in models + [("", calib)])
    payloads = livegen.random_payloads(n_bytes, seed=7)
    frame_len = len(packets.request(payloads[0], PORT))

    plans = {}
    configs = [Config("forward", None, "forward")]
    for name, m in [(CALIBRATION, calib)] + models:
        # the planner's best cut for CPUMAP, inside a layer if need be
        p = plan.make(m, None, 2, split=True, carry="cpumap")
        plans[name] = p
        configs.append(Config(name, m, "one_cpu", plan.auto_cuts(m)))
        configs.append(Config(name, m, "two_cpus", [plan.row_cut(r) for r in p["stages"]]))
    affinity = os.sched_getaffinity(0)
    prefix = s.netns_prefix or f"xdpnn-bench-{os.getpid()}"
    drops = CpumapDrops()
    try:
        with Topology(prefix) as t, Sink(t.sink, "s0", drop=True) as rx, \
                livegen.LiveGen(t.gen, "g0", payloads, PORT) as gen:
            progress(f"bench --stages: {t.gen} [g0] -> [d0] {t.dut} [d1] -> [s0] {t.sink}, "
                     f"{frame_len}-byte requests, generator on CPU {RX_CPU}, "
                     f"stage 1 on CPU {NEXT_CPU}")
            try:
                for c in configs:
                    progress(f"  compile {c.name} {c.mode}"
                             + (f" (stages {stages.describe(c.cuts)})" if c.cuts else ""))
                    build(c, t)
                os.sched_setaffinity(0, {RX_CPU})  # veth receives on the sending CPU
                soft = (ksoftirqd(RX_CPU), ksoftirqd(NEXT_CPU))
                for c in configs[1:]:
                    bits = np.stack([reference.bits_from_bytes(p, c.model.sizes[0])
                                     for p in payloads])
                    want = np.bincount(reference.predict(c.model, bits),
                                       minlength=c.model.sizes[-1])
                    c.classes_exact = check_classes(c, gen, t, want)
                for k in range(s.trials):
                    order = configs[k % len(configs):] + configs[:k % len(configs)]
                    for c in order:
                        rate_trial(c, gen, t, rx, drops, s.trial_seconds, soft)
                    progress(f"  trial {k + 1}/{s.trials}: " + ", ".join(
                        f"{c.name} {c.mode} {c.pps[-1] / 1e3:.0f}" for c in configs) + " kpps")
            finally:
                os.sched_setaffinity(0, affinity)
                for c in configs:
                    if c.prog:
                        c.prog.close()
    finally:
        drops.close()
    return document(s, configs, plans, frame_len, started)


def constants(by: dict, s1_ns: float) -> dict:
    """Per trial, the per-frame CPU costs of loader/plan.py rates(), in CPU
    ns: path from plain forwarding; from the calibration model, the
    hand-off (CPU 0's ns per frame with two stages less with one, plus
    stage 1's layers, which CPU 0 no longer runs) and the next CPU's cost
    beside stage 1's layers."""
    one, two = by[(CALIBRATION, "one_cpu")], by[(CALIBRATION, "two_cpus")]
    out = {"path_ns": by[("forward", "forward")].cpu0_ns,
           "handoff_ns": [b - a + s1_ns for a, b in zip(one.cpu0_ns, two.cpu0_ns)]}
    if two.cpu1_ns:
        out["next_ns"] = [x - s1_ns for x in two.cpu1_ns]
    return out


def capacity(c: Config) -> list[float]:
    """Per trial, frames/s the datapath's CPUs would give if nothing else
    ran on them: 1e9 / the busiest CPU's ns per frame (CPU time)."""
    if c.mode != "two_cpus":
        return [1e9 / x for x in c.cpu0_ns]
    if not c.cpu1_ns:
        return []
    return [1e9 / max(a, b) for a, b in zip(c.cpu0_ns, c.cpu1_ns)]


def document(s: Settings, configs: list[Config], plans: dict, frame_len: int,
             started: float) -> dict:
    by = {(c.name, c.mode): c for c in configs}
    const = constants(by, plans[CALIBRATION]["stages"][1]["ns"])
    med = {k: float(np.median(v)) for k, v in const.items()}
    results = []
    for name in [CALIBRATION] + s.shapes:
        p = plans[name]
        stage_ns = [r["ns"] for r in p["stages"]]
        pred = plan.rates(stage_ns, med["path_ns"], med["handoff_ns"],
                          med.get("next_ns", plan.NEXT_NS))
        one, two = by[(name, "one_cpu")], by[(name, "two_cpus")]
        entry = {"model": name, "calibration": name == CALIBRATION,
                 "plan": {"stages": [plan.row_cut(r) for r in p["stages"]], "stage_ns": stage_ns,
                          "costs": p["costs"], "per_cpu_ns": pred["per_cpu_ns"]},
                 "one_cpu_stages": [x.as_list() for x in one.cuts] if one.cuts else None,
                 "speedup": summary([b / a for a, b in zip(one.pps, two.pps)]),
                 "predicted_speedup": round(pred["pipelined"] / pred["one_cpu"], 3)}
        cap_one, cap_two = capacity(one), capacity(two)
        if cap_one and cap_two:
            entry["speedup_cpu_time"] = summary([b / a for a, b in zip(cap_one, cap_two)])
        for c, key, cap in ((one, "one_cpu", cap_one), (two, "two_cpus", cap_two)):
            predicted = pred["pipelined" if key == "two_cpus" else "one_cpu"]
            entry[key] = {"pps": summary(c.pps), "sent": c.sent, "counted": c.counted,
                          "received": c.received, "lost": c.sent - c.counted,
                          "cpumap_drops": c.cpumap_drops if key == "two_cpus" else None,
                          "veth_drops": c.veth_drops, "classes_exact": c.classes_exact,
                          "cpu0_ns_per_frame": summary(c.cpu0_ns),
                          "cpu1_ns_per_frame": summary(c.cpu1_ns) if c.cpu1_ns else None,
                          "ksoftirqd_share": summary(c.softirqd_share),
                          "pps_cpu_time": summary(cap) if cap else None,
                          "predicted_pps": predicted,
                          "predicted_compute_only_pps": pred["compute_only"][
                              "pipelined" if key == "two_cpus" else "one_cpu"],
                          "measured_over_predicted": summary([x / predicted for x in c.pps]),
                          "cpu_time_over_predicted": summary([x / predicted for x in cap])
                          if cap else None}
        results.append(entry)
    f = by[("forward", "forward")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    return {"schema": "xdpnn-bench-stages/1",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "environment": {"kernel": platform.release(), "cpu_model": cpu,
                            "cpus": os.cpu_count(), "packet_bytes": frame_len,
                            "trials": s.trials, "trial_seconds": s.trial_seconds,
                            "rx_cpu": RX_CPU, "next_cpu": NEXT_CPU,
                            "cpumap_queue": DEFINES["NN_STAGE_QSIZE"],
                            "loadavg_end": [float(x) for x in
                                            open("/proc/loadavg").read().split()[:3]]},
            "forward": {"pps": summary(f.pps), "sent": f.sent, "received": f.received,
                        "veth_drops": f.veth_drops},
            "constants": {**{k: summary(v) for k, v in const.items()},
                          "calibration_model": CALIBRATION},
            "models": results}


def markdown(r: dict) -> str:
    def rng(x, scale=1e-3, fmt="{:.1f}"):
        return (f"{fmt.format(x['median'] * scale)} ({fmt.format(x['min'] * scale)}-"
                f"{fmt.format(x['max'] * scale)})")

    lines = ["| model | datapath | stages (layers) | kpps, median (min-max) | kpps in CPU time | "
             "predicted kpps | measured / predicted | CPU time / predicted | "
             "lost (CPUMAP queue, veth) | classes exact |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in r["models"]:
        name = m["model"] + (" (calibration)" if m["calibration"] else "")
        for key, label in (("one_cpu", "one CPU"), ("two_cpus", "two CPUMAP stages, CPUs 0+1")):
            x = m[key]
            cuts = m["one_cpu_stages"] if key == "one_cpu" else m["plan"]["stages"]
            st = stages.describe(cuts).replace("|", "\\|") if cuts else "one program"
            if key == "one_cpu" and cuts:
                st += " (tail calls)"
            lost = (f"{x['lost']:,} ({x['cpumap_drops']:,}, {x['veth_drops']:,})"
                    if key == "two_cpus" else f"{x['lost']:,} (-, {x['veth_drops']:,})")
            cap = x["pps_cpu_time"]
            ratio = x["cpu_time_over_predicted"]
            lines.append(f"| {name} | {label} | {st} | {rng(x['pps'])} | "
                         f"{rng(cap) if cap else '-'} | {x['predicted_pps'] / 1e3:.1f} | "
                         f"{rng(x['measured_over_predicted'], 1, '{:.2f}')} | "
                         f"{rng(ratio, 1, '{:.2f}') if ratio else '-'} | {lost} | "
                         f"{'yes' if x['classes_exact'] else 'NO'} |")
    lines += ["", "| model | speedup, two stages over one CPU | in CPU time | predicted |",
              "|---|---|---|---|"]
    for m in r["models"]:
        cpu = m.get("speedup_cpu_time")
        lines.append(f"| {m['model']} | {rng(m['speedup'], 1, '{:.2f}')} | "
                     f"{rng(cpu, 1, '{:.2f}') if cpu else '-'} | "
                     f"{m['predicted_speedup']:.2f} |")
    c, env = r["constants"], r["environment"]
    lines += ["", f"Plain forwarding {rng(r['forward']['pps'], 1e-3)} kpps on CPU {env['rx_cpu']}; "
                  f"CPU ns per frame: path {c['path_ns']['median']:.0f}, hand-off "
                  f"{c['handoff_ns']['median']:.0f}, next CPU "
                  f"{c['next_ns']['median'] if 'next_ns' in c else float('nan'):.0f} "
                  "(medians, measured in this run; "
                  f"calibration model {c['calibration_model']}); predictions: loader/plan.py "
                  "rates() on the planner's predicted stage costs. "
                  f"Kernel {env['kernel']}, {env['cpu_model']} ({env['cpus']} CPUs), "
                  f"{env['packet_bytes']}-byte frames, {env['trials']} trials of "
                  f"{env['trial_seconds']} s per datapath, load average "
                  f"{env['loadavg_end'][0]:.2f} at the end. kpps in CPU time: 1e9 / the "
                  "busiest CPU's ns per frame (the sending thread on CPU 0, the CPUMAP kthread "
                  "on CPU 1), the rate free CPUs would give."]
    return "\n".join(lines) + "\n"


def command(args, progress_fn=progress, prefix: str | None = None) -> None:
    s = Settings.quick() if args.quick else Settings()
    if args.shape:
        s.shapes = args.shape
    if args.model:
        raise UsageError("bench --stages: measures random models of --shape, not --model files")
    if args.trials is not None:
        s.trials = args.trials
    if args.seconds is not None:
        s.trial_seconds = args.seconds
    s.netns_prefix = prefix or ""  # checked by bench.netns_prefix
    out_dir = Path(args.out or time.strftime("results/bench-stages-%Y%m%d-%H%M%S"))
    result = run(s)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(result))
    progress_fn(f"bench --stages: wrote {out_dir}/bench.json, bench.md in {result['seconds']} s")
    print(json.dumps(result, indent=1) if args.json else markdown(result))
