"""User-space baselines for the benchmark: the same weights and inputs as the
XDP program, one inference at a time (as XDP runs once per packet), compiled
now by the system compiler for this CPU:

    c_fixed      traffic/bnn_fixed.c, scalar with hardware popcnt, sizes
                 compiled in from the model (the XDP program's -D flags)
    c_simd       the same source, AVX-512 VPOPCNTDQ, else AVX2, if the CPU
                 has either
    c_generic    traffic/bnn_user.c, scalar, sizes known only at run time
    numpy_batch  trainer/reference.py over the whole batch

Each is checked against trainer/reference.py on every input before it is
timed; a disagreement is an error, never a figure.
"""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from xdpnn.loader import layout
from xdpnn.loader.errors import MismatchError, MissingFeatureError
from xdpnn.trainer import reference
from xdpnn.trainer.model import Model

FIXED = resources.files("xdpnn.traffic") / "bnn_fixed.c"
GENERIC = resources.files("xdpnn.traffic") / "bnn_user.c"
# -march=native brings popcnt (and whatever else this CPU has); -mpopcnt is
# the fallback for compilers that do not know the CPU.
FLAG_SETS = (["-O3", "-march=native"], ["-O3", "-mpopcnt"])
# The scalar builds stay scalar (the XDP program has no vector instructions):
# without this, -O3 -march=native may vectorise the popcount loops itself.
SCALAR = ["-fno-tree-vectorize"]
# (name, /proc/cpuinfo flags it needs, compiler flags, BNN_SIMD), best first.
SIMD_ISAS = (("avx512-vpopcntdq", {"avx512f", "avx512_vpopcntdq"},
              ["-mavx512f", "-mavx512vpopcntdq"], 512),
             ("avx2", {"avx2"}, ["-mavx2"], 256))
KINDS = {"c_fixed": "scalar", "c_simd": "simd", "c_generic": "scalar", "numpy_batch": "numpy"}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass
class Runner:
    """One baseline for one model: call(rounds) classifies every input
    `rounds` times over and returns the classes.

    The C baselines are timed in this thread's CPU time: like
    BPF_PROG_TEST_RUN, which stops its clock while it yields the CPU, they
    are not charged for time other tasks take on a shared machine.  numpy's
    BLAS may run threads of its own, so it is timed by the wall clock."""
    name: str
    build: str
    call: Callable[[int], np.ndarray]
    n: int
    clock: Callable[[], int] = time.thread_time_ns
    rounds: int = 0  # passes per timing, set by the first timing

    @property
    def kind(self) -> str:
        return KINDS[self.name]

    def ns(self, seconds: float) -> float:
        """ns per inference, timed over passes that take at least `seconds`."""
        if not self.rounds:
            t = self.clock()
            self.call(1)
            self.rounds = max(1, math.ceil(seconds * 1e9 / max(self.clock() - t, 1)))
        t = self.clock()
        self.call(self.rounds)
        return (self.clock() - t) / (self.n * self.rounds)


class CBaselines:
    """Compiles the C baselines into shared libraries in a temporary folder."""

    def __init__(self):
        self.cc = shutil.which("cc") or shutil.which("gcc")
        if not self.cc:
            raise MissingFeatureError("bench: no C compiler (cc/gcc) for the user-space baseline")
        self.dir = tempfile.TemporaryDirectory(prefix="xdpnn-baseline-")
        self.built = 0
        version = subprocess.run([self.cc, "--version"], capture_output=True, text=True).stdout
        self.compiler = version.splitlines()[0]
        flags = cpu_flags()
        self.isas = [isa for isa in SIMD_ISAS if isa[1] <= flags]
        self.simd = "none: the CPU has neither AVX-512 VPOPCNTDQ nor AVX2"
        self.generic, _ = self.build(GENERIC, SCALAR)
        self.generic.bnn_each.restype = None

    def build(self, source, extra: list[str]) -> tuple[ctypes.CDLL, str]:
        """(library, flags used): -march=native if the compiler takes it."""
        self.built += 1
        lib = Path(self.dir.name) / f"lib{self.built}.so"
        errors = []
        for flags in FLAG_SETS:
            cmd = [self.cc, *flags, *extra, "-shared", "-fPIC", "-o", str(lib), str(source)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                return ctypes.CDLL(str(lib)), " ".join(flags + [f for f in extra
                                                                if not f.startswith("-D")])
            errors.append(r.stderr.strip().splitlines()[-1:])
        raise MissingFeatureError(f"bench: compile {Path(str(source)).name} failed: {errors}")

    def runners(self, model: Model, bits: np.ndarray) -> dict[str, Runner]:
        """Every baseline for this model on these input rows, checked
        against the reference; the weights and inputs are packed beforehand
        so that timing a call times the inference."""
        # The C baselines read the horizontal layout (rows of weight words).
        hz = layout.horizontal(model.sizes)
        m = np.ascontiguousarray(layout.model_words(model, hz))
        inputs = np.ascontiguousarray(layout.pack_rows(bits))
        sizes = np.array(model.sizes, np.int32)
        n = len(bits)
        ptr = ctypes.c_void_p

        def c_call(fn, *args):
            out = np.zeros(n, np.uint32)
            argv = (*args, inputs.ctypes.data_as(ptr), n)

            def call(rounds: int) -> np.ndarray:
                fn(*argv, rounds, out.ctypes.data_as(ptr))
                return out.astype(np.int64)
            call.keep = (m, sizes, inputs, out)  # the buffers the pointers point into
            return call

        shape = layout.cflags(model, methods=hz)
        lib, flags = self.build(FIXED, SCALAR + shape + ["-DBNN_SIMD=0"])
        runs = [Runner("c_fixed", f"{FIXED.name} scalar, {flags}",
                       c_call(lib.bnn_fixed, m.ctypes.data_as(ptr)), n)]
        for name, _, isa_flags, width in self.isas:
            try:
                lib, flags = self.build(FIXED, isa_flags + shape + [f"-DBNN_SIMD={width}"])
            except MissingFeatureError:
                continue  # a compiler without these intrinsics: try the next
            self.simd = name
            runs.append(Runner("c_simd", f"{FIXED.name} {name}, {flags}",
                               c_call(lib.bnn_fixed, m.ctypes.data_as(ptr)), n))
            break
        runs.append(Runner("c_generic", f"{GENERIC.name} scalar, sizes at run time",
                           c_call(self.generic.bnn_each, m.ctypes.data_as(ptr),
                                  sizes.ctypes.data_as(ptr), len(sizes)), n))
        runs.append(Runner("numpy_batch", "trainer/reference.py, numpy",
                           lambda rounds: [reference.predict(model, bits)
                                           for _ in range(rounds)][-1], n,
                           time.perf_counter_ns))
        want = reference.predict(model, bits)
        for r in runs:
            got = r.call(1)
            if not (got == want).all():
                bad = int(np.flatnonzero(got != want)[0])
                raise MismatchError(f"bench: baseline {r.name} ({r.build}) disagrees with the "
                                    f"reference on model {model.shape}, input {bad}: class "
                                    f"{got[bad]}, expected {want[bad]}")
        return {r.name: r for r in runs}

    def close(self):
        self.dir.cleanup()
