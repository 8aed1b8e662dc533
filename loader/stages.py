"""Stages (docs/partitioning.md): one model built as several XDP programs,
each running a contiguous range of layers, chained by tail calls.

Stage 0 is an ordinary build of bpf/xdpnn.c with -DNN_STAGE=0 (it parses
the packet and owns the maps); each later stage is built with NN_PIN_DIR
set to a pin folder where stage 0's shared maps are pinned, so every
stage reads one configuration and counts in one place (bpf/stage.h).
Stage s-1's one-slot nn_next holds stage s.  A program array keeps its
slots only while user space holds the array, so the caller keeps the
descriptors (verify, tests) or pins them (attach).
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from xdpnn.bpf.shared import DEFINES, ENUMS, python_names
from xdpnn.loader import bpf_sys, compile, progarray
from xdpnn.loader.errors import UsageError
from xdpnn.trainer.model import Model

# The maps of stage 0 that later stages open through pins (bpf/stage.h);
# serving adds the request the last stage answers.
SHARED = ("nn_config", "nn_counters", "nn_tx_port", "nn_serve", "nn_stage", "nn_stage_err")
SERVE_SHARED = ("nn_stage_req",)
# bad_digest, bad_layer, bad_bits, no_next, truncated, no_room
ERRORS = python_names(ENUMS["nn_stage_error"])
HEADER = DEFINES["NN_STAGE_HEADER"]
ETHERTYPE = DEFINES["NN_STAGE_ETHERTYPE"]  # of a carrying frame between hops
OUTER = DEFINES["NN_STAGE_OUTER"]          # its outer Ethernet header
ROOM = DEFINES["NN_STAGE_ROOM"]            # bytes a stage may put in front of a frame
SLOTS = DEFINES["NN_STAGE_SLOTS"]
MAX_WORDS = DEFINES["NN_STAGE_MAX_WORDS"]
GROUP = 64  # a cut inside a layer falls between groups of this many neurons


def digest(model: Model) -> int:
    """The first 8 bytes of sha256 over the sizes (u32 each) and the weights
    (packed bits, thresholds, output scales and biases, as in the model
    file), as a little-endian u64: what a stage checks activations against."""
    h = hashlib.sha256(np.asarray(model.sizes, "<u4").tobytes())
    for l, w in enumerate(model.weights):
        h.update(np.packbits(np.asarray(w, np.uint8), axis=1).tobytes())
        if l < len(model.thresholds):
            h.update(np.asarray(model.thresholds[l], "<i8").tobytes())
    h.update(np.asarray(model.out_scale, "<i8").tobytes())
    h.update(np.asarray(model.out_bias, "<i8").tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def layers(model_or_sizes) -> int:
    """Layers a stage can hold: the hidden ones, then the output layer."""
    return len(getattr(model_or_sizes, "sizes", model_or_sizes)) - 1


class Cut(NamedTuple):
    """One stage's share of a model: from neuron first_neuron of layer first
    up to, not including, neuron end_neuron of layer end.  Neuron 0 is the
    layer's start, so Cut(a, b) is the whole layers a .. b-1; a neuron
    other than 0 (a multiple of GROUP) cuts inside a hidden layer."""
    first: int
    end: int
    first_neuron: int = 0
    end_neuron: int = 0

    @property
    def split(self) -> bool:
        return bool(self.first_neuron or self.end_neuron)

    def as_list(self) -> list[int]:
        """As plan files and attach records hold it: [first, end], and the
        neurons only where the cut falls inside a layer."""
        return list(self) if self.split else [self.first, self.end]

    def describe(self) -> str:
        """layers 0..1; with a cut inside a layer, its neurons as [from:to]."""
        if not self.split:
            return f"layers {self.first}..{self.end - 1}"
        first = f"{self.first}[{self.first_neuron}:]" if self.first_neuron else f"{self.first}"
        if self.first == self.end:
            return f"layer {self.first}[{self.first_neuron}:{self.end_neuron}]"
        if self.end == self.first + 1 and not self.end_neuron:
            return f"layer {first}"
        last = f"{self.end}[:{self.end_neuron}]" if self.end_neuron else f"{self.end - 1}"
        return f"layers {first}..{last}"


def describe(cuts) -> str:
    return " | ".join(Cut(*c).describe() for c in cuts)


def check_cuts(sizes: list[int], cuts: list[list[int]], what: str) -> list[Cut]:
    """cuts: [first, end] layer ranges, or [first, end, first_neuron,
    end_neuron] where a cut falls inside a hidden layer, contiguous from 0
    to the output layer."""
    n, given = layers(sizes), cuts
    ok = (isinstance(cuts, (list, tuple)) and cuts and all(
        isinstance(c, (list, tuple)) and len(c) in (2, 4) and all(type(x) is int for x in c)
        for c in cuts))
    if ok:
        cuts = [Cut(*c) for c in cuts]
        starts = [(c.first, c.first_neuron) for c in cuts]
        ends = [(c.end, c.end_neuron) for c in cuts]
        ok = (starts[0] == (0, 0) and ends[-1] == (n, 0)
              and all(a < b for a, b in zip(starts, ends)) and starts[1:] == ends[:-1])
    if not ok:
        raise UsageError(f"{what}: stages must be [first, end] layer ranges (or [first, end, "
                         f"first_neuron, end_neuron] to cut inside a layer) that run "
                         f"contiguously from 0 to {n} (the output layer is {n - 1}), got {given!r}")
    for layer, neuron in ends[:-1]:
        if neuron and not (layer < n - 1 and neuron % GROUP == 0 and neuron < sizes[layer + 1]):
            raise UsageError(f"{what}: a cut inside a layer falls inside a hidden layer, at a "
                             f"multiple of {GROUP} neurons: layer {layer} neuron {neuron} is not "
                             f"one ({describe(cuts)})")
    return cuts


def flags(model: Model, stage: int, cut: Cut, carry: bool = False,
          next_cpu: int | None = None, hop: bool = False) -> tuple[str, ...]:
    out = (f"NN_STAGE={stage}", f"NN_STAGE_FIRST={cut.first}", f"NN_STAGE_END={cut.end}",
           f"NN_STAGE_DIGEST={digest(model):#x}ULL")
    if cut.split:  # groups of GROUP neurons (bpf/stage.h)
        out += (f"NN_STAGE_FIRST_G={cut.first_neuron // GROUP}",
                f"NN_STAGE_END_G={cut.end_neuron // GROUP}")
    if carry or hop:
        out += ("NN_STAGE_CARRY=1",)
    if hop:
        out += ("NN_STAGE_HOP=1",)
    if next_cpu is not None:
        out += (f"NN_STAGE_NEXT_CPU={next_cpu}",
                f"NN_STAGE_CPU_SLOTS={bpf_sys.possible_cpus()}")
    return out


def carried(bits: int, hop: bool = False, done: int = 0) -> int:
    """Bytes a frame grows by to carry bits activations (header, words, and
    the words of the done neurons of a layer cut inside; on the wire
    between hops, the outer Ethernet header too)."""
    return (OUTER if hop else 0) + HEADER + 8 * ((bits + 63) // 64) + 8 * (done // GROUP)


def build_hop(model: Model, cuts, stage: int, record_input: bool = False) -> compile.Program:
    """Stage `stage` alone, for a hop (docs/partitioning.md, "Hop chaining"):
    activations carried on the wire behind an outer Ethernet header, the
    frame handed on out of the peer; its maps are its own (the stage is
    attached alone), nn_stage and nn_stage_err among them."""
    cuts = check_cuts(model.sizes, [list(c) for c in cuts], f"stages of {model.shape}")
    if not 0 <= stage < len(cuts):
        raise UsageError(f"--stage {stage}: the plan has {len(cuts)} stages (0..{len(cuts) - 1})")
    if model.mode not in ("payload", "headers"):
        raise UsageError(f"model {model.shape}: stages run payload and headers models "
                         f"({model.mode} mode is one program)")
    check_split(model, cuts)
    check_room(model, cuts, hop=True)
    return compile.build(model, record_input=record_input,
                         defines=flags(model, stage, cuts[stage], hop=True),
                         extra_maps=("nn_stage", "nn_stage_err"),
                         what=f"model {model.shape} hop stage {stage} ({cuts[stage].describe()})")


def check_room(model: Model, cuts: list[Cut], hop: bool) -> None:
    """Packet-carried hand-offs fit in front of the frame (ROOM bytes)."""
    for s, c in enumerate(cuts[:-1]):
        need = carried(model.sizes[c.end], hop, c.end_neuron)
        if need > ROOM:
            raise UsageError(
                f"model {model.shape} stage {s} ({c.describe()}) hands on {need} bytes in front "
                f"of the frame; a {'hop' if hop else 'CPUMAP'} chain has room for {ROOM} "
                "(docs/partitioning.md): plan with --cpus or --hop, which keeps the cuts "
                "within it, or chain by tail calls")


def check_split(model: Model, cuts: list[Cut]) -> None:
    """A multi-bit first layer (bpf/bnn_multibit.h) runs whole."""
    if model.input_bits > 1 and any(c.first == 0 and c.first_neuron or c.end == 0 and c.end_neuron
                                    for c in cuts):
        raise UsageError(f"model {model.shape}: its first layer takes {model.input_bits}-bit "
                         f"inputs and runs whole in one stage ({describe(cuts)})")


def check_cpus(cpus, n_stages: int) -> list[int]:
    """The CPUs of stages 1..n-1 (stage 0 runs where the frame arrives):
    one each, online."""
    online = online_cpus()
    if len(cpus) != n_stages - 1:
        raise UsageError(f"--cpus {','.join(map(str, cpus))}: the model runs as {n_stages} "
                         f"stages, so give {n_stages - 1} CPU(s), one for each stage after "
                         "the first (stage 0 runs on the CPU that receives the frame)")
    bad = [c for c in cpus if c not in online]
    if bad:
        raise UsageError(f"--cpus: CPU {bad[0]} is not online (online: "
                         f"{','.join(map(str, sorted(online)))})")
    return list(cpus)


def online_cpus() -> set[int]:
    out = set()
    with open("/sys/devices/system/cpu/online") as f:
        for part in f.read().strip().split(","):
            a, _, b = part.partition("-")
            out.update(range(int(a), int(b or a) + 1))
    return out


@dataclass
class Staged:
    """The stages of one model, loaded and chained; stage 0 first.  Looks
    like a compile.Program (prog_fd, maps: stage 0's) to test runs."""
    stages: list[compile.Program]
    cuts: list[Cut]
    model: Model = field(init=False)

    def __post_init__(self):
        self.model = self.stages[0].model

    @property
    def prog_fd(self) -> int:
        return self.stages[0].prog_fd

    @property
    def maps(self) -> dict[str, int]:
        return self.stages[0].maps

    @property
    def record_input(self) -> bool:
        return self.stages[0].record_input

    @property
    def methods(self):
        return self.stages[0].methods

    @property
    def cflags(self):
        return self.stages[0].cflags

    def close(self):
        for p in self.stages:
            p.close()


def build(model: Model, cuts, pin_dir: str, record_input: bool = False, methods=None,
          link: bool = True, carry: bool = False, cpus: list[int] | None = None,
          serve: bool = False) -> Staged:
    """Builds every stage; stage 0's shared maps are pinned in pin_dir (an
    existing folder; the caller removes it).  link=False leaves the nn_next
    slots empty (each stage then runs alone: --measure).  carry: the
    activations travel in the packet; cpus (those of stages 1.., checked by
    check_cpus): each stage hands the frame to the next one's CPU by CPUMAP,
    carrying them.  serve: stage 0 parses requests and the last stage
    replies (NN_SERVE), chained by tail calls only."""
    cuts = check_cuts(model.sizes, [list(c) for c in cuts], f"stages of {model.shape}")
    if model.mode not in ("payload", "headers"):
        raise UsageError(f"model {model.shape}: stages run payload and headers models "
                         f"({model.mode} mode is one program)")
    if serve and (carry or cpus):
        raise UsageError(f"model {model.shape}: served stages chain by tail calls: the last "
                         "stage replies with XDP_TX, which a CPUMAP program cannot")
    check_split(model, cuts)
    if carry or cpus:
        check_room(model, cuts, hop=False)
    shared = SHARED + (SERVE_SHARED if serve else ())
    if not re.fullmatch(r"[\w./@+-]+", pin_dir):
        raise UsageError(f"{pin_dir}: a stage pin folder of letters, digits and ._@+-/ only")
    built: list[compile.Program] = []
    try:
        for s, cut in enumerate(cuts):
            last = s == len(cuts) - 1
            nxt = "nn_cpus" if cpus else "nn_next"
            extra = (() if last else (nxt,)) + (("nn_stage", "nn_stage_err") if s == 0
                                                else ())
            if s == 0 and serve:
                extra += SERVE_SHARED
            f = flags(model, s, cut, carry or bool(cpus),
                      cpus[s] if cpus and not last else None) + (("NN_SERVE",) if serve else ())
            what = f"model {model.shape} stage {s} ({cut.describe()})"
            if s == 0:
                p = compile.build(model, record_input=record_input,
                                  defines=f, methods=methods,
                                  extra_maps=extra, what=what)
                built.append(p)
                for name in shared:
                    if not os.path.exists(f"{pin_dir}/{name}"):
                        bpf_sys.pin(p.maps[name], f"{pin_dir}/{name}")
            else:
                built.append(compile.build(model, defines=f, methods=methods, added_to=pin_dir,
                                           extra_maps=extra, what=what, cpumap=bool(cpus)))
        if link:
            for s, (prev, nxt) in enumerate(zip(built, built[1:])):
                if cpus:  # struct bpf_cpumap_val: queue size, then the program
                    value = struct.pack("<Ii", DEFINES["NN_STAGE_QSIZE"], nxt.prog_fd)
                    bpf_sys.map_update(prev.maps["nn_cpus"], cpus[s], value, "nn_cpus")
                else:
                    progarray.put(prev.maps["nn_next"], 0, nxt.prog_fd, "nn_next")
    except BaseException:
        for p in built:
            p.close()
        raise
    return Staged(built, cuts)


class TempPins:
    """A private pin folder for a build that is not attached (verify,
    tests, --measure): the stages need the pins only while they load."""

    def __init__(self):
        from xdpnn.loader.datapath import BPFFS, ensure_bpffs
        ensure_bpffs()
        self.dir = f"{BPFFS}/xdpnn_stages_{os.getpid()}_{id(self):x}"  # bpffs: no dots

    def __enter__(self) -> str:
        os.makedirs(self.dir)
        return self.dir

    def __exit__(self, *exc):
        for entry in os.listdir(self.dir):
            os.unlink(f"{self.dir}/{entry}")
        os.rmdir(self.dir)


def build_unpinned(model: Model, cuts, record_input: bool = False, methods=None,
                   link: bool = True, carry: bool = False, serve: bool = False) -> Staged:
    """build() through a temporary pin folder, removed before it returns."""
    with TempPins() as d:
        return build(model, cuts, d, record_input, methods, link, carry, serve=serve)


def read_errors(fd: int) -> dict[str, int]:
    """nn_stage_err summed over CPUs, by reason."""
    n = bpf_sys.possible_cpus()
    out = {}
    for k, name in enumerate(ERRORS):
        raw = bpf_sys.map_lookup(fd, k, 8 * n, "nn_stage_err")
        out[name] = int(np.frombuffer(raw, "<u8").sum())
    return out


def write_act(fd: int, slot: int, digest_value: int, next_layer: int, bits: int,
              words: np.ndarray | None = None) -> None:
    """Writes one nn_stage entry (struct nn_stage_act: a whole layer's input,
    next_group 0, no done words) on every CPU (tests, --measure)."""
    w = np.zeros(2 * MAX_WORDS, "<u8")  # w, then done
    if words is not None:
        w[:len(words)] = words
    value = struct.pack("<QHHI", digest_value, next_layer, 0, bits) + w.tobytes()
    bpf_sys.map_update(fd, slot, value * bpf_sys.possible_cpus(), "nn_stage")
