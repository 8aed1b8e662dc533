"""`xdpnn demo`: the whole flow on namespaces of its own.

Builds sender -> host under test -> receiver, attaches a model to the host
under test with a forwarding peer, sends requests and a few frames that are
not requests, shows the kernel's counts live and, at the end, next to the
reference's; then removes everything it made, on Ctrl-C too.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from loader import bpf_sys, datapath
from loader.errors import MismatchError, UsageError
from trainer import features, reference
from trainer.model import random_model
from traffic import packets
from traffic.sender import send_frames
from traffic.sink import Sink
from traffic.topology import Topology

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
DEFAULT_SHAPE = [256, 32, 16, 4]


def say(msg: str = "", end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def run(args) -> int:
    n_requests = args.packets
    if not 1 <= n_requests <= 100_000:
        raise UsageError(f"--packets {n_requests}: expected 1..100000")
    if args.model:
        model, model_path, origin = datapath.load_model(args.model), args.model, args.model
    else:
        model = random_model(DEFAULT_SHAPE, seed=42)
        origin = "random weights (seed 42): a stand-in for a trained model"
        model_path = None
    if model.mode != "payload":
        raise UsageError(f"demo: model {model.shape} takes headers input; the demo sends "
                         "payload requests")
    port = model.input.get("port", 9595)
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, (n_requests, model.sizes[0]), dtype=np.uint8)
    frames = [packets.request(reference.bytes_from_bits(b), port) for b in bits]
    others = [f for _, f, result in packets.crafted_cases(port, (model.sizes[0] + 7) // 8)
              if result != "classified" and len(f) >= 14]
    # The reference's counts, over every frame sent, through the Python twin
    # of the kernel's parser.
    inputs = [features.model_input(f, "payload", model.sizes[0], port)[1]
              for f in frames + others]
    want = np.bincount(reference.predict(model, np.stack([b for b in inputs if b is not None])),
                       minlength=model.sizes[-1])

    stats_before = BPF_STATS.read_text().strip() if BPF_STATS.exists() else None
    with Topology(f"xdpnn-demo-{os.getpid()}") as t:
        say(f"[1/5] topology: {t.gen} [g0] -> [d0] {t.dut} [d1] -> [s0] {t.sink}")
        with Sink(t.sink, "s0") as receiver, Sink(t.gen, "g0"):
            if model_path is None:
                model_path = f"/tmp/xdpnn-demo-{os.getpid()}.npz"
                model.save(model_path)
            try:
                say(f"[2/5] model: {model.shape}, classes {', '.join(model.classes)}; {origin}")
                say(f"[3/5] attach: xdpnn -n {t.dut} attach d0 --peer d1 --model {model_path}")
                rec = datapath.attach("d0", model_path, peer="d1", ns=t.dut)
                if stats_before is not None:
                    BPF_STATS.write_text("1")
                say(f"      program id {rec['prog_id']}, native XDP on d0 and d1, "
                    f"requests are UDP to port {port}")
                say(f"[4/5] traffic: {n_requests} requests and {len(others)} other frames "
                    "(ARP, IPv6, VLAN, malformed, wrong port)")
                _send_with_live_counts(t, frames + others)
                time.sleep(0.2)
                same = _report(t, model, want, receiver, len(frames) + len(others),
                               rec["prog_id"])
            finally:
                if stats_before is not None:
                    BPF_STATS.write_text(stats_before)
                datapath.detach("d0", t.dut) if os.path.isdir(datapath.pin_dir("d0", t.dut)) \
                    else None
                if not args.model:
                    os.unlink(model_path)
                say("cleaning up: detached, namespaces removed")
    return 0 if same else MismatchError.exit_code


def _send_with_live_counts(t: Topology, frames: list[bytes]) -> None:
    chunk = max(1, len(frames) // 10)
    live = sys.stdout.isatty()
    for start in range(0, len(frames), chunk):
        send_frames(t.gen, "g0", frames[start:start + chunk], max_seconds=10)
        time.sleep(0.3)  # slow enough to watch the counts grow
        s = datapath.stats("d0", t.dut)
        line = "      sent %5d: " % min(start + chunk, len(frames)) + \
            "  ".join(f"{c} {v}" for c, v in s["classes"].items())
        if live:
            say("\r" + line, end="")
        elif start == 0 or start + chunk >= len(frames):
            say(line)
    if live:
        say()


def _report(t, model, want, receiver, n_frames, prog_id) -> None:
    s = datapath.stats("d0", t.dut)
    say("[5/5] results (kernel counters vs the Python reference on the same inputs):")
    say(f"      {'class':<12}{'kernel':>8}{'reference':>11}")
    for k, name in enumerate(model.classes):
        say(f"      {name:<12}{s['classes'][name]:>8}{int(want[k]):>11}")
    same = list(s["classes"].values()) == want.tolist()
    say(f"      kernel == reference: {'yes' if same else 'NO'}")
    other = {k: v for k, v in s["input"].items() if v and k != "classified"}
    say("      not classified, forwarded untouched: " +
        ", ".join(f"{k} {v}" for k, v in other.items()))
    received = receiver.counts()[0]
    say(f"      received at the far end: {received}/{n_frames} frames")
    info = bpf_sys.prog_info(bpf_sys.prog_fd_by_id(prog_id))
    if info.run_cnt:
        say(f"      XDP program cost (bpf_stats): {info.run_time_ns / info.run_cnt:.0f} ns "
            f"per packet over {info.run_cnt} packets, this machine, including parsing")
    return same and received == n_frames
