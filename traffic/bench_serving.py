"""`xdpnn bench --serving`: requests answered from XDP against the same
requests answered by the user-space C server (traffic/userserve.py), on the
same namespaces, model, inputs, load generators and CPUs, trial after trial
in alternation, so that every ratio is of figures taken a moment apart.

    client [c0] 198.18.0.1  <--veth-->  [s0] 198.18.0.2 server
    load client (CPU 0)                 xdp: bpf/xdpnn.c -DNN_SERVE on s0
    XDP pass on c0, a queue             user: C server on UDP 9595, XDP pass on s0
    (or reqgen's counter, XDP drop)

s0 runs NAPI in a kernel thread pinned to the server's CPU, where the C
server is pinned too, both at SERVER_PRIORITY: all the server's work, XDP
or socket, is on the server's CPU; c0's NAPI runs in softirq where the
reply was sent from, the server's CPU, for both alike.  One XDP link on s0
for the run, its program replaced between trials (see run()).

Per trial and server, with traffic/serve_load.c (sendmmsg/recvmmsg, one
socket, pinned to the client's CPU), which checks the class of every reply
against the reference:
  flood    open loop as fast as it can send: replies/s and losses
  window   closed loop, WINDOW requests outstanding
  loads    open loop at 10%, 50% and 90% of the server's peak (the largest
           median of flood, window and live): RTT percentiles and losses
and with the live-frames request generator (traffic/reqgen.py, on the
client's CPU), which sends requests faster than any server here answers
and counts the replies whose class is the reference's:
  live     replies/s, the generator sending as fast as it can
  live_1cpu  the same with the generator on the server's CPU, at normal
           priority: one CPU for generator and server, for both alike

serve_load's one socket tops out near the servers' own peaks on a busy
machine (`generator_bound`); the live generator does not, and it reaches a
UDP socket on s0 as well as the XDP program: both servers see the same
requests from the same generator.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from pyroute2 import IPRoute

from xdpnn.loader import bpf_sys, compile
from xdpnn.loader.errors import MismatchError, MissingFeatureError, XdpnnError
from xdpnn.loader.netns import ifindex, netns, write_sysfs_net
from xdpnn.trainer import reference
from xdpnn.trainer.model import Model
from xdpnn.traffic.reqgen import ReqGen
from xdpnn.traffic.sink import Sink
from xdpnn.traffic.topology import SERVER_ADDRS, ClientServer
from xdpnn.traffic.userserve import UserServer

DEFAULT_SHAPE = "784-64-32-10"
PORT = 9595
LOADS = (0.1, 0.5, 0.9)
WINDOW = 256
SERVERS = ("xdp", "user_c")
LOAD_CLIENT = resources.files("xdpnn.traffic") / "serve_load.c"


@dataclass
class Settings:
    trials: int = 5
    seconds: float = 1.0     # per server per measurement
    inputs: int = 1024

    @classmethod
    def quick(cls) -> "Settings":
        return cls(trials=3, seconds=0.3, inputs=256)


def cpus() -> tuple[int, int]:
    """(client CPU, server CPU): two different CPUs where there are two."""
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[-1])


def build_load_client(folder: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise MissingFeatureError("bench: no C compiler (cc/gcc) for the serving load client")
    exe = folder / "serve_load"
    src = Path(str(LOAD_CLIENT))
    bpf = Path(str(resources.files("xdpnn.bpf") / "xdpnn_shared.h")).parent
    r = subprocess.run([cc, "-O2", f"-I{bpf}", "-o", str(exe), str(src)], capture_output=True,
                       text=True)
    if r.returncode:
        raise MissingFeatureError(f"bench: compile {src.name}: "
                                  f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return exe


def napi_threads(dev: str) -> set[int]:
    """PIDs of the kernel threads that run NAPI of interfaces named dev."""
    pids = set()
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and Path(f"/proc/{d}/comm").read_text().startswith(f"napi/{dev}-"):
                pids.add(int(d))
        except OSError:
            pass
    return pids


# The scheduling priority (SCHED_FIFO) of the server side, the same for s0's
# NAPI thread and the C server, and of the load generators on the client's
# CPU: on a CPU shared with other work, a NAPI thread that waits its turn
# behind other processes lets veth's 256-frame ring overflow within
# milliseconds, a C server that waits lets its socket fill, and a generator
# that waits sends in bursts; at a real-time priority each runs as on a CPU
# of its own.  The servers block when idle, every generator stops after
# its trial's seconds, and the kernel's real-time throttling
# (kernel.sched_rt_runtime_us) still leaves the CPU's other work 5%.
SERVER_PRIORITY = 50


def realtime(pids, cpu: int) -> None:
    """Pins pids to the CPU at SERVER_PRIORITY."""
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(SERVER_PRIORITY))


def backpressure(t: ClientServer) -> None:
    """A queue (pfifo_fast, txqueuelen frames) on c0, which has none by
    default: when s0's ring is full, veth stops c0's queue and the requests
    wait in it, where without a queue they are dropped (the client's UDP
    sends count them as UdpSndbufErrors), whichever server answers."""
    with netns(t.client), IPRoute() as ipr:
        ipr.tc("add", "pfifo_fast", ipr.link_lookup(ifname="c0")[0], 0x10000)


def threaded_napi(t: ClientServer, cpu: int) -> list[int]:
    """Turns on threaded NAPI on s0 (XDP is attached) and runs its new
    threads on the server's CPU at SERVER_PRIORITY; returns their PIDs.
    Threads of other namespaces' interfaces of the same name existed
    before: not touched.

    c0 keeps NAPI in softirq: it runs on the CPU that sent the reply, the
    server's, for both servers alike; in a thread of its own it would wait
    behind the generator, which keeps the client's CPU busy."""
    before = napi_threads("s0")
    with netns(t.server):
        write_sysfs_net("s0", "threaded", "1")
    pinned = sorted(napi_threads("s0") - before)
    realtime(pinned, cpu)
    return pinned


class Bench:
    def __init__(self, model: Model, s: Settings, t: ClientServer, folder: Path):
        self.model, self.s, self.t = model, s, t
        self.client_cpu, self.server_cpu = cpus()
        n_bytes = (model.sizes[0] + 7) // 8
        rng = np.random.default_rng(7)
        bits = rng.integers(0, 2, (s.inputs, model.sizes[0]), dtype=np.uint8)
        raw = [reference.bytes_from_bits(b) for b in bits]
        self.inputs_file, self.classes_file = folder / "inputs", folder / "classes"
        self.inputs_file.write_bytes(b"".join(raw))
        self.classes_file.write_bytes(bytes(reference.predict(model, bits).astype(np.uint8)))
        self.n_bytes = n_bytes
        self.load_client = build_load_client(folder)
        self.live: ReqGen | None = None
        self.count: Sink | None = None

    def load(self, rate: float, seconds: float, window: int = 0) -> dict:
        """serve_load from the client's namespace and CPU."""
        cmd = [str(self.load_client), SERVER_ADDRS[0], str(PORT), str(self.inputs_file),
               str(self.n_bytes), str(self.classes_file), f"{rate:.1f}", str(seconds), "0.5",
               str(window)]
        with netns(self.t.client):
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        realtime([p.pid], self.client_cpu)
        out, err = p.communicate(timeout=seconds + 60)
        if p.returncode:
            raise XdpnnError(f"bench: serving load client: {err.strip()}")
        r = json.loads(out)
        if r["mismatched"]:
            raise MismatchError(f"bench: {r['mismatched']} replies with another class than the "
                                "reference's")
        r["rate"] = r["received"] / r["seconds"] if r["seconds"] else 0.0
        r["offered"] = r["sent"] / r["seconds"] if r["seconds"] else 0.0
        return r

    def flood_live(self, seconds: float, cpu: int) -> dict:
        """The live generator for `seconds` on `cpu`, its counter on c0 in
        place of the pass-through one: replies/s with the reference's class.
        On the client's CPU it runs at SERVER_PRIORITY, as serve_load does;
        on the server's at normal priority, behind the server."""
        self.count.detach()
        self.live.attach()
        try:
            before = self.live.counts()
            policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
            if cpu == self.client_cpu:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(SERVER_PRIORITY))
            try:
                sent = self.live.send(int(LIVE_MAX_RATE * seconds), seconds, cpu=cpu)
            finally:
                os.sched_setscheduler(0, policy, param)
            time.sleep(LIVE_DRAIN)
            after = self.live.counts()
        finally:
            self.live.detach()
            self.count.attach()
        n = {k: after[k] - before[k] for k in after}
        if n["wrong"]:
            raise MismatchError(f"bench: {n['wrong']} replies to the live generator with another "
                                "class than the reference's, or an error")
        return {"rate": n["ok"] / sent.seconds, "offered": sent.pps, "sent": sent.frames,
                "received": n["ok"], "seconds": sent.seconds}


def run(model: Model, name: str, s: Settings, progress, prefix: str | None = None) -> dict:
    """The serving section of the bench result (docs/benchmarks.md, "Serving");
    the namespaces are <prefix>-cli and <prefix>-srv."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="xdpnn-bench-serving-") as d, \
            ClientServer(prefix or f"xdpnn-serving-{os.getpid()}", sink=False) as t:
        b = Bench(model, s, t, Path(d))
        progress(f"bench serving: {t.client} [c0] <-> [s0] {t.server}, model {name}, client "
                 f"CPU {b.client_cpu}, server CPU {b.server_cpu}")
        xdp = compile.build(model, defines=("NN_SERVE",))
        # c0: an XDP program, without which XDP_TX from s0 cannot reach it.
        count = b.count = Sink(t.client, "c0", attach=False)
        raw = Path(d, "inputs").read_bytes()
        b.live = ReqGen(t.client, "c0", [raw[i:i + b.n_bytes] for i in
                                         range(0, len(raw), b.n_bytes)],
                        list(Path(d, "classes").read_bytes()), PORT)
        # s0, for the C server: veth NAPI (which an XDP program turns on) in
        # s0's thread on the server's CPU, as XDP serving runs.
        to_stack = Sink(t.server, "s0", attach=False)
        link = None
        results = {k: {"flood": [], "window": [], "live": [], "live_1cpu": [],
                       "loads": {str(f): [] for f in LOADS}}
                   for k in SERVERS}
        try:
            backpressure(t)
            with UserServer(model, PORT, "c", t.server, b.server_cpu) as user:
                realtime([user.pid], b.server_cpu)
                with netns(t.server):
                    s0 = ifindex("s0", t.server)

                # One link on s0 for the whole run, its program replaced
                # between trials: detaching XDP from a veth deletes its NAPI,
                # and the threads made at the next attach would be neither
                # pinned nor at the server's priority.
                with netns(t.server):  # the ifindex is the namespace's
                    link = bpf_sys.xdp_link(s0, xdp.prog_fd, "native", "s0")
                count.attach()
                pinned = threaded_napi(t, b.server_cpu)
                progs = {"xdp": xdp.prog_fd, "user_c": to_stack.fn.fd}

                for phase in ("flood", "window", "live", "live_1cpu", "loads"):
                    for k in range(s.trials):
                        for kind in SERVERS[k % 2:] + SERVERS[:k % 2]:
                            bpf_sys.link_update(link, progs[kind], "s0")
                            measure(b, phase, kind, results)
                        progress(f"  {phase}, trial {k + 1}/{s.trials}: " +
                                 summary_line(results, phase))
        finally:
            if link is not None:
                os.close(link)
            for p in (count, to_stack, b.live):
                if p is not None:
                    p.close()
            xdp.close()
    return report(results, model, name, s, b, pinned, time.time() - started)


def peak(results: dict, kind: str) -> float:
    """The server's peak so far: the largest median of flood, window, live."""
    r = results[kind]
    return max(float(np.median([x["rate"] for x in r[p]])) for p in ("flood", "window", "live")
               if r[p])


FLOOD_RATE = 5e6  # more than serve_load can send: as fast as it can
LIVE_MAX_RATE = 10e6  # more than the live generator sends: the time bound ends it
LIVE_DRAIN = 0.05  # seconds for the last replies to reach the counter


def measure(b: Bench, phase: str, kind: str, results: dict) -> None:
    r = results[kind]
    if phase == "flood":
        r["flood"].append(b.load(FLOOD_RATE, b.s.seconds))
    elif phase == "window":
        r["window"].append(b.load(FLOOD_RATE, b.s.seconds, window=WINDOW))
    elif phase == "live":
        r["live"].append(b.flood_live(b.s.seconds, b.client_cpu))
    elif phase == "live_1cpu":
        r["live_1cpu"].append(b.flood_live(b.s.seconds, b.server_cpu))
    else:
        top = peak(results, kind)
        for f in LOADS:
            r["loads"][str(f)].append(b.load(f * top, b.s.seconds))


def summary_line(results: dict, phase: str) -> str:
    def last(kind):
        r = results[kind][phase]
        if phase != "loads":
            return f"{r[-1]['rate'] / 1e3:.0f}k/s"
        return " ".join(f"{float(f) * 100:.0f}%: p50 {v[-1]['rtt_us']['p50']:.0f} us"
                        for f, v in r.items())
    return ", ".join(f"{k} {last(k)}" for k in SERVERS)


def stat(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "trials": [round(float(v), 1) for v in values]}


def report(results: dict, model: Model, name: str, s: Settings, b: Bench, pinned: dict,
           seconds: float) -> dict:
    servers = {}
    for kind, r in results.items():
        loads = {}
        for f, runs in r["loads"].items():
            loads[f] = {"rate": stat([x["rate"] for x in runs]),
                        "lost": int(sum(x["lost"] for x in runs)),
                        "sent": int(sum(x["sent"] for x in runs)),
                        **{p: stat([x["rtt_us"][p] for x in runs]) for p in ("p50", "p90", "p99")}}
        servers[kind] = {
            "peak": peak(results, kind),
            "flood": {"rate": stat([x["rate"] for x in r["flood"]]),
                      "offered": stat([x["offered"] for x in r["flood"]]),
                      "lost": int(sum(x["lost"] for x in r["flood"])),
                      "sent": int(sum(x["sent"] for x in r["flood"])),
                      "generator_bound": bool(np.median([x["rate"] / x["offered"]
                                                         for x in r["flood"]]) > 0.9)},
            "window": {"rate": stat([x["rate"] for x in r["window"]]),
                       "lost": int(sum(x["lost"] for x in r["window"]))},
            **{p: {"rate": stat([x["rate"] for x in r[p]]),
                   "offered": stat([x["offered"] for x in r[p]]),
                   "unanswered": int(sum(x["sent"] - x["received"] for x in r[p])),
                   "sent": int(sum(x["sent"] for x in r[p]))} for p in ("live", "live_1cpu")},
            "loads": loads}
    x, u = results["xdp"], results["user_c"]
    ratios = {"peak_flood": stat([a["rate"] / c["rate"] for a, c in zip(x["flood"], u["flood"])]),
              "peak_window": stat([a["rate"] / c["rate"]
                                   for a, c in zip(x["window"], u["window"])]),
              **{f"peak_{p}": stat([a["rate"] / c["rate"] for a, c in zip(x[p], u[p])])
                 for p in ("live", "live_1cpu")}}
    for f in LOADS:
        ratios[f"p50_at_{f}"] = stat([c["rtt_us"]["p50"] / a["rtt_us"]["p50"] for a, c in
                                      zip(x["loads"][str(f)], u["loads"][str(f)])])
    return {"model": name, "shape": model.shape, "servers": servers,
            "ratios_note": "peak ratios are XDP over user space, RTT ratios user space over XDP",
            "ratios": ratios,
            "setup": {"trials": s.trials, "seconds": s.seconds, "inputs": s.inputs,
                      "window": WINDOW, "loads": list(LOADS), "client_cpu": b.client_cpu,
                      "server_cpu": b.server_cpu,
                      "s0_napi_threads_pinned": len(pinned),
                      "server_priority": f"SCHED_FIFO {SERVER_PRIORITY}",
                      "client_priority": f"SCHED_FIFO {SERVER_PRIORITY} (live generator on the "
                                         "server's CPU: normal)",
                      "c0_qdisc": "pfifo_fast",
                      "load_client": "traffic/serve_load.c (sendmmsg/recvmmsg, one socket)",
                      "live_generator": "traffic/reqgen.py (BPF_PROG_RUN live frames)",
                      "user_server": "traffic/serve_user.c, " + " ".join(
                          ["-O2", "-march=native"]),
                      "seconds_total": round(seconds, 1)}}


def markdown(r: dict) -> str:
    """The serving tables: peak and RTT against load, per server, and ratios."""
    names = {"xdp": "XDP (attach --serve)", "user_c": "user-space C server"}
    lines = ["| server | peak requests/s | flood: served (offered) k/s, lost | closed loop "
             f"({r['setup']['window']} outstanding) k/s | live generator: served (offered) k/s "
             "| live generator on the server's CPU: served (offered) k/s |",
             "|---|---|---|---|---|---|"]

    def k(s):
        return f"{s['median'] / 1e3:.0f} ({s['min'] / 1e3:.0f}-{s['max'] / 1e3:.0f})"
    for kind, v in r["servers"].items():
        f = v["flood"]
        lines.append(f"| {names[kind]} | {v['peak'] / 1e3:.0f}k | {k(f['rate'])} "
                     f"({f['offered']['median'] / 1e3:.0f}), {f['lost']} of {f['sent']} | "
                     f"{k(v['window']['rate'])} | " + " | ".join(
                         f"{k(v[p]['rate'])} ({v[p]['offered']['median'] / 1e3:.0f})"
                         for p in ("live", "live_1cpu")) + " |")
    lines += ["", "| server | load (of its own peak) | requests/s reached | RTT p50 us | p90 us | "
              "p99 us | lost |", "|---|---|---|---|---|---|---|"]
    for kind, v in r["servers"].items():
        for f, x in v["loads"].items():
            lines.append(f"| {names[kind]} | {float(f) * 100:.0f}% | "
                         f"{x['rate']['median']:.0f} | {x['p50']['median']:.0f} | "
                         f"{x['p90']['median']:.0f} | {x['p99']['median']:.0f} | "
                         f"{x['lost']} of {x['sent']} |")
    ra = r["ratios"]

    def q(s):
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
    lines += ["", f"XDP over the C server, same trial, median (min-max) of {r['setup']['trials']}: "
                  f"flood {q(ra['peak_flood'])}, closed loop {q(ra['peak_window'])}, live "
                  f"generator {q(ra['peak_live'])}, on the server's CPU "
                  f"{q(ra['peak_live_1cpu'])}; "
                  "RTT p50 of the C server over XDP's at 10%, 50%, 90% of each one's peak: "
                  + ", ".join(q(ra[f"p50_at_{f}"]) for f in r["setup"]["loads"]) + ".",
              "", f"Model {r['model']}; {r['setup']['trials']} trials of {r['setup']['seconds']} s "
                  f"per server per figure, alternating; client on CPU {r['setup']['client_cpu']}, "
                  f"server (XDP's NAPI thread, or the C server and its NAPI thread, "
                  f"{r['setup']['server_priority']}) on CPU {r['setup']['server_cpu']}; load "
                  f"client: {r['setup']['load_client']}, and {r['setup']['live_generator']}; "
                  "every reply's class checked against the reference."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> str | None:
    """RTT percentiles against the requests/s reached, per server."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'xdpnn[bench]')"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (kind, v), color in zip(r["servers"].items(), ("tab:blue", "tab:orange")):
        xs = [x["rate"]["median"] / 1e3 for x in v["loads"].values()]
        for p, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
            ax.plot(xs, [x[p]["median"] for x in v["loads"].values()], style, color=color,
                    label=f"{kind} {p}")
        ax.axvline(v["peak"] / 1e3, color=color, alpha=0.4, label=f"{kind} peak")
    ax.set(yscale="log", xlabel="requests/s reached (thousands), at 10/50/90% of each peak",
           ylabel="round-trip time, us", title=f"Serving {r['model']}: XDP against a "
                                               "user-space C server")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def command(args, progress, prefix: str | None = None) -> None:
    """`xdpnn bench --serving`: measure, write bench.json, bench.md and
    bench-serving.png to the results directory, print the tables."""
    import platform

    from xdpnn.loader import datapath
    from xdpnn.trainer.model import random_model
    s = Settings.quick() if args.quick else Settings()
    if args.trials is not None:
        s.trials = args.trials
    if args.seconds is not None:
        s.seconds = args.seconds
    if args.model:
        model = datapath.load_model(args.model[0])
        datapath.binary_inputs_only(model, args.model[0], "bench-serving")
        name = f"{model.shape} ({Path(args.model[0]).name})"
    else:
        name = (args.shape or [DEFAULT_SHAPE])[0]
        model = random_model([int(x) for x in name.split("-")], seed=1)
    datapath.one_program_only(model, args.model[0] if args.model else None, "bench --serving",
                              "the serving bench serves one program: serve its stages with "
                              "`xdpnn attach IFACE --model F --serve` and measure them with "
                              "`xdpnn query`")
    out_dir = Path(args.out or time.strftime("results/bench-serving-%Y%m%d-%H%M%S"))
    serving = run(model, name, s, progress, prefix)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    result = {"schema": "xdpnn-bench-serving/1", "environment": {
                  "kernel": platform.release(), "cpu_model": cpu, "cpus": os.cpu_count(),
                  "load_average": open("/proc/loadavg").read().split()[:3]},
              "serving": serving}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(serving))
    why = plot(serving, out_dir / "bench-serving.png")
    if why:
        progress(why)
    progress(f"bench: wrote {out_dir}/bench.json, bench.md"
             f"{', bench-serving.png' if not why else ''}")
    print(json.dumps(result, indent=1) if args.json else markdown(serving))
