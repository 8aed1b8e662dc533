"""Hidden-layer methods side by side: BPF_PROG_TEST_RUN ns per request and
instruction counts of one shape built with different methods per layer.

    python scripts/bench_methods.py [--rounds N] SHAPE:METHODS ...
    e.g. 784-256-256-10:hh 784-256-256-10:vv 784-256-256-10:auto

METHODS is one letter per hidden layer (h horizontal, v vertical) or `auto`
(the codegen's choice).  Every build is loaded first; then each round times
every build in turn (order reversed every other round) on the same 8 random
requests, so builds are compared moments apart.  Prints medians (and min-max)
over rounds of the mean of 8 test runs of `repeat` each.
"""
import argparse
import statistics

import numpy as np

from xdpnn.loader import bpf_sys, compile
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model
from xdpnn.traffic import packets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    progs, frames = {}, {}
    try:
        for spec in args.builds:
            shape, methods = spec.split(":")
            model = random_model([int(n) for n in shape.split("-")], seed=3)
            progs[spec] = compile.build(model, methods=None if methods == "auto" else methods)
            bits = np.random.default_rng(0).integers(0, 2, (8, model.sizes[0]), dtype=np.uint8)
            frames[spec] = [packets.request(reference.bytes_from_bits(b), model.input["port"])
                            for b in bits]
        ns = {spec: [] for spec in progs}
        for r in range(args.rounds):
            for spec in (args.builds if r % 2 == 0 else args.builds[::-1]):
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
