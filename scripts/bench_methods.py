"""Hidden-layer methods side by side: BPF_PROG_TEST_RUN ns per request and
instruction counts of one shape built with different methods per layer.

    python scripts/bench_methods.py [--rounds N] [--against DIR] SHAPE:METHODS ...
    e.g. 784-256-256-10:hh 784-256-256-10:vv 784-256-256-10:auto
         --against /tmp/main/bpf 784-64-32-10:auto   (A/B against another bpf/)

METHODS is one letter per hidden layer (h horizontal, v vertical, w vertical
in 32-bit lanes, at most 32 neurons) or `auto`
(the codegen's choice).  Every build is loaded first; then each round times
every build in turn (order reversed every other round) on the same 8 random
requests, so builds are compared moments apart.  Prints medians (and min-max)
over rounds of the mean of 8 test runs of `repeat` each.

--against DIR also builds every spec from DIR's xdpnn.c and headers (another
checkout's bpf/, e.g. `git archive main bpf | tar -x -C /tmp/main`), with
this checkout's loader and weight layout, so both must agree on the layout;
those rows are marked `@DIR` and timed in the same rounds.  A spec ending
in `@here` is built from this checkout only: a method the other checkout
does not have (e.g. 256-32-16-2:hh 256-32-16-2:wh@here against a checkout
without w).
"""
import argparse
import contextlib
import statistics
from pathlib import Path

import numpy as np

from xdpnn.loader import bpf_sys, compile
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model
from xdpnn.traffic import packets


@contextlib.contextmanager
def sources(bpf_dir):
    """Builds from bpf_dir's program text and headers (None: this checkout's)."""
    if bpf_dir is None:
        yield
        return
    saved = compile.BPF_DIR, compile.SOURCE
    compile.BPF_DIR, compile.SOURCE = Path(bpf_dir), Path(bpf_dir) / "xdpnn.c"
    try:
        yield
    finally:
        compile.BPF_DIR, compile.SOURCE = saved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--against", metavar="DIR", help="also build every spec from DIR's bpf sources")
    args = ap.parse_args()
    if args.against and not (Path(args.against) / "xdpnn.c").is_file():
        ap.error(f"--against {args.against}: no xdpnn.c there")
    progs, frames = {}, {}
    try:
        for spec in args.builds:
            here_only = spec.endswith("@here")
            shape, methods = spec.removesuffix("@here").split(":")
            model = random_model([int(n) for n in shape.split("-")], seed=3)
            bits = np.random.default_rng(0).integers(0, 2, (8, model.sizes[0]), dtype=np.uint8)
            for bpf_dir in [None] + ([args.against] if args.against and not here_only else []):
                key = spec if bpf_dir is None else f"{spec} @{bpf_dir}"
                with sources(bpf_dir):
                    progs[key] = compile.build(model,
                                               methods=None if methods == "auto" else methods)
                frames[key] = [packets.request(reference.bytes_from_bits(b),
                                               model.input["port"]) for b in bits]
        ns = {spec: [] for spec in progs}
        order = list(progs)
        for r in range(args.rounds):
            for spec in (order if r % 2 == 0 else order[::-1]):
                fd = progs[spec].prog_fd
                ns[spec].append(np.mean([bpf_sys.test_run(fd, f, repeat=args.repeat)[1]
                                         for f in frames[spec]]))
        print("| build | methods | xlated insns | verified insns | ns/request median (min-max) |")
        print("|---|---|---|---|---|")
        for spec, prog in progs.items():
            info = bpf_sys.prog_info(prog.prog_fd)
            v = ns[spec]
            print(f"| {spec} | {''.join(prog.methods)} | {info.xlated_prog_len // 8} | "
                  f"{info.verified_insns} | {statistics.median(v):.0f} "
                  f"({min(v):.0f}-{max(v):.0f}) |")
    finally:
        for prog in progs.values():
            prog.close()


if __name__ == "__main__":
    main()
