"""Frames through the compiled program with BPF_PROG_TEST_RUN, no interface:
what the kernel decided for each, next to what the reference says.

The class the kernel chose is read from its own per-class counters (the
counter that moved), so `verify` checks the very program `attach` loads.
Built with record_input, the program also keeps the last input bits it
extracted, which `predict` shows beside the Python twin's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from xdpnn.loader import bpf_sys, compile, maps
from xdpnn.trainer import features, reference
from xdpnn.trainer.model import DEFAULT_PORT, Model

# BPF_PROG_TEST_RUN puts an XDP frame in one page, after 256 bytes of
# headroom and before the skb_shared_info (320 bytes on 64-bit kernels): a
# longer frame would reach the program cut short, which no native XDP attach
# shows it (veth refuses an MTU that large for a program like this one).
MAX_FRAME = os.sysconf("SC_PAGESIZE") - 256 - 320


@dataclass
class Outcome:
    verdict: str           # XDP action returned
    result: str            # input result (features.INPUT_RESULTS)
    cls: int | None        # class, when classified
    bits: np.ndarray | None = None  # input the kernel used (record_input builds): bits or values


class Runner:
    """A loaded program driven by test runs; one frame at a time."""

    def __init__(self, prog: compile.Program, port: int):
        self.prog = prog
        self.model = prog.model
        self.port = port
        cfg = compile.read_config(prog.maps["nn_config"])
        cfg.udp_port = port
        compile.write_config(prog.maps["nn_config"], cfg)
        self.counters = compile.read_counters(prog.maps["nn_counters"])
        self.n_cpus = bpf_sys.possible_cpus()

    def run(self, frame: bytes, time_ns: int | None = None) -> Outcome:
        """time_ns: flow-mode replay builds (NN_FLOW_REPLAY_CLOCK) take it as the
        packet's time."""
        if self.prog.record_input:
            self._mark_last()
        if time_ns is not None:
            bpf_sys.map_update(self.prog.maps["nn_flow_clock"], 0,
                               int(time_ns).to_bytes(8, "little"), "nn_flow_clock")
        verdict, _, _ = bpf_sys.test_run(self.prog.prog_fd, frame)
        now = compile.read_counters(self.prog.maps["nn_counters"])
        d_input = now["input"] - self.counters["input"]
        d_class = now["class_packets"] - self.counters["class_packets"]
        self.counters = now
        result = features.INPUT_RESULTS[int(np.argmax(d_input))] if d_input.any() else "?"
        cls = int(np.argmax(d_class)) if d_class.any() else None
        bits = self._last_bits() if self.prog.record_input else None
        return Outcome(maps.VERDICTS[verdict] if verdict < len(maps.VERDICTS) else str(verdict),
                       result, cls, bits)

    def _last_bits(self) -> np.ndarray:
        """The input bits the program recorded for the frame just run."""
        fd, size = self._last_map()
        raw = bpf_sys.map_lookup(fd, 0, size * self.n_cpus, "nn_last")
        rows = np.frombuffer(raw, np.uint8).reshape(self.n_cpus, size)
        # Only the CPU that ran the test overwrote its all-ones record.
        row = rows[int(np.argmax((rows != 0xFF).any(axis=1)))]
        return reference.model_input(self.model, np.unpackbits(row)[:self.model.raw_bits])

    def _last_map(self) -> tuple[int, int]:
        fd = self.prog.maps["nn_last"]
        return fd, bpf_sys.map_info(fd).value_size

    def _mark_last(self) -> None:
        fd, size = self._last_map()
        bpf_sys.map_update(fd, 0, b"\xff" * size * self.n_cpus, "nn_last")


def build(model: Model, record_input: bool = False):
    """The model loaded as attach loads it: one program, or the tail-call
    stages of its automatic cut when one program is over the verifier
    budget (docs/partitioning.md, "When a model is staged"); frames go to
    the one program or to stage 0 alike."""
    from xdpnn.loader import plan, stages
    cuts = plan.auto_cuts(model)
    if not cuts:
        return compile.build(model, record_input=record_input)
    return stages.build_unpinned(model, cuts, record_input=record_input)


def expected(model: Model, frame: bytes, port: int) -> tuple[str, int | None, np.ndarray | None]:
    """What the reference says of a frame: (input result, class, input bits or values)."""
    result, bits = features.model_input(frame, model.mode, model.raw_bits, port)
    if bits is None:
        return result, None, None
    x = reference.model_input(model, bits)
    return result, int(reference.predict(model, x[None, :])[0]), x


def verify(model: Model, samples: int, seed: int = 0, progress=None, methods=None,
           oracle=None, cuts=None) -> dict:
    """Random inputs through the kernel and the reference; counts mismatches.

    oracle(bits) -> classes replaces the reference: `verify --graph` compares
    the kernel with the framework that runs the graph a model came from.

    Payload mode sends random inputs (bits, or k-bit values with the bits
    above k random too, which the model must ignore) as requests; headers
    mode sends random TCP/UDP/ICMP packets, whose inputs come from the Python
    twin.  cuts: run the model as tail-call stages of these [first, end)
    layer ranges (loader/stages.py); the frames go to stage 0.
    """
    from xdpnn.traffic import packets  # scapy loads only for commands that build frames

    rng = np.random.default_rng(seed)
    port = model.input.get("port", DEFAULT_PORT)
    if model.mode == "payload":
        raw = rng.integers(0, 2, (samples, model.raw_bits), dtype=np.uint8)
        frames = [packets.request(reference.bytes_from_bits(b), port) for b in raw]
    else:
        frames = packets.random_frames(rng, samples)
        raw = np.stack([features.model_input(f, "headers", model.raw_bits, port)[1]
                        for f in frames])
    bits = np.stack([reference.model_input(model, r) for r in raw])
    want = oracle(bits) if oracle else reference.predict(model, bits)
    started = time.monotonic()
    if cuts:
        from xdpnn.loader import stages
        prog = stages.build_unpinned(model, cuts, methods=methods)
    else:
        prog = compile.build(model, methods=methods) if methods else compile.build(model)
    mismatches, examples = 0, []
    try:
        runner = Runner(prog, port)
        for i, frame in enumerate(frames):
            out = runner.run(frame)
            if out.cls != want[i]:
                mismatches += 1
                if len(examples) < 5:
                    examples.append({"index": i, "kernel": out.cls, "reference": int(want[i]),
                                     "result": out.result, "frame_hex": frame.hex()})
            if progress and (i + 1) % 1000 == 0:
                progress(i + 1, samples)
        infos = [bpf_sys.prog_info(p.prog_fd) for p in getattr(prog, "stages", [prog])]
        ns = time_per_input(prog, frames[:8])
    finally:
        prog.close()
    return {"model": model.shape, "input": model.mode, "input_bits": model.input_bits,
            "input_signed": model.input_signed, "samples": samples, "seed": seed,
            "mismatches": mismatches, "examples": examples,
            "classes_seen": int(len(np.unique(want))),
            "verified_insns": sum(i.verified_insns for i in infos),
            "xlated_insns": sum(i.xlated_prog_len for i in infos) // 8,
            "stages": [{"layers": c.as_list(), "verified_insns": i.verified_insns}
                       for c, i in zip(getattr(prog, "cuts", []), infos)],
            "ns_per_input": ns,
            "methods": "".join(prog.methods),
            "seconds": round(time.monotonic() - started, 2)}


def time_per_input(prog: compile.Program, frames: list[bytes], repeat: int = 1000,
                   rounds: int = 3) -> int:
    """ns per frame in BPF_PROG_TEST_RUN (parse, inference, verdict), the
    mean over frames of the kernel's average over repeat runs; the fastest
    of rounds, as other work on a shared machine only ever adds time."""
    return round(min(np.mean([bpf_sys.test_run(prog.prog_fd, f, repeat=repeat)[1]
                              for f in frames]) for _ in range(rounds)))
