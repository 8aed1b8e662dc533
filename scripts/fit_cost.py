"""Fits the cost model of loader/cost.py: builds a set of shapes with forced
methods, times them side by side with BPF_PROG_TEST_RUN, reads their
verified instruction counts, and solves for the per-layer and per-word
coefficients by non-negative least squares.

    python scripts/fit_cost.py [--rounds N] [--write]

--write stores the coefficients, with this machine's CPU and the date, in
loader/cost_model.json (what `xdpnn model show` and cost.predict use).
Then it checks the fit on the default bench shapes (built with the
codegen's choice), which the fit has not seen, and prints both tables as
markdown for docs/benchmarks.md.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from xdpnn.loader import bpf_sys, compile, cost
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model
from xdpnn.traffic import packets

# (shape, methods): one and two hidden layers of each method, across input
# widths, neuron counts and class counts, so every coefficient is identified.
FIT = [("256-32-2", "h"), ("1024-32-2", "h"), ("1024-64-2", "h"), ("1024-128-2", "h"),
       ("256-32-32-2", "hh"), ("256-128-10", "h"), ("256-32-10", "h"),
       ("256-64-2", "v"), ("1024-64-2", "v"), ("1024-128-2", "v"), ("256-64-64-2", "vv"),
       ("512-128-64-2", "vh"), ("784-256-2", "v"), ("784-64-2", "v"), ("784-32-10", "h"),
       ("256-32-2", "w"), ("1024-32-2", "w"), ("512-16-2", "w"), ("256-32-32-2", "ww"),
       ("784-32-10", "w"), ("784-64-32-10", "vw")]
CHECK = [("256-32-16-2", None), ("784-64-32-10", None), ("784-256-256-10", None)]


def measure(builds, rounds: int, repeat: int) -> dict:
    """{(shape, methods): (ns per request, verified insns, methods)}, all
    builds loaded first, then timed in turn each round (order reversed every
    other round) on 8 random requests each.  The ns figure is the fastest
    round's: on a shared machine other jobs only ever add time, so the
    minimum is the figure least disturbed by them."""
    progs, frames = {}, {}
    try:
        for shape, methods in builds:
            model = random_model([int(n) for n in shape.split("-")], seed=3)
            progs[shape, methods] = compile.build(model, methods=methods)
            bits = np.random.default_rng(0).integers(0, 2, (8, model.sizes[0]), dtype=np.uint8)
            frames[shape, methods] = [packets.request(reference.bytes_from_bits(b),
                                                      model.input["port"]) for b in bits]
        ns = {key: [] for key in progs}
        for r in range(rounds):
            for key in (list(progs) if r % 2 == 0 else list(progs)[::-1]):
                ns[key].append(np.mean([bpf_sys.test_run(progs[key].prog_fd, f,
                                                         repeat=repeat)[1]
                                        for f in frames[key]]))
        return {key: (min(ns[key]),
                      bpf_sys.prog_info(progs[key].prog_fd).verified_insns,
                      progs[key].methods) for key in progs}
    finally:
        for prog in progs.values():
            prog.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from scipy.optimize import nnls  # scipy comes with scikit-learn (the test extra)
    load = open("/proc/loadavg").read().split()[0]
    got = measure(FIT + CHECK, args.rounds, args.repeat)
    sizes = {key: [int(n) for n in key[0].split("-")] for key in got}
    names = list(cost.features([8, 8, 2], ("h",)))
    x = np.array([[cost.features(sizes[k], got[k][2])[n] for n in names] for k in FIT])
    fitted = {}
    for i, what in enumerate(("ns", "verified_insns")):
        y = np.array([got[k][i] for k in FIT], float)
        coef, _ = nnls(x, y)  # no cost is negative
        fitted[what] = {n: round(float(c), 3) for n, c in zip(names, coef)}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    doc = {"machine": {"cpu_model": cpu, "kernel": platform.release(),
                       "measured": time.strftime("%Y-%m-%d"), "loadavg_1min": float(load),
                       "rounds": args.rounds, "repeat": args.repeat},
           **fitted}
    print(json.dumps(doc, indent=1))
    if args.write:
        path = Path(cost.__file__).with_name(cost.COEFFS_FILE)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    print("\n| build | methods | measured ns | predicted ns | measured verified insns | "
          "predicted |")
    print("|---|---|---|---|---|---|")
    for key in FIT + CHECK:
        p = cost.predict(sizes[key], got[key][2], doc)
        mark = "" if key in FIT else " (not fitted)"
        print(f"| {key[0]}{mark} | {''.join(got[key][2])} | {got[key][0]:.0f} | {p.ns:.0f} | "
              f"{got[key][1]} | {p.insns:.0f} |")


if __name__ == "__main__":
    main()
