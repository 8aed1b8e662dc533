"""User-space baselines for the benchmark: the same weights and inputs as the
XDP program, run by C with hardware popcount (traffic/bnn_user.c, compiled
now by the system compiler for this CPU) and by numpy (trainer/reference.py).
Each is checked against the reference before it is timed.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from xdpnn.loader import layout
from xdpnn.loader.errors import MissingFeatureError
from xdpnn.trainer import reference
from xdpnn.trainer.model import Model

SOURCE = resources.files("xdpnn.traffic") / "bnn_user.c"
# -march=native brings popcnt (and whatever else this CPU has); -mpopcnt is
# the fallback for compilers that do not know the CPU.
FLAG_SETS = (["-O3", "-march=native"], ["-O3", "-mpopcnt"])
NAMES = ("c_single", "c_batch", "numpy_batch")  # the figures measure() returns


class CBaseline:
    """traffic/bnn_user.c, compiled into a temporary shared library."""

    def __init__(self):
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise MissingFeatureError("bench: no C compiler (cc/gcc) for the user-space baseline")
        self.dir = tempfile.TemporaryDirectory(prefix="xdpnn-baseline-")
        lib = Path(self.dir.name) / "libbnn.so"
        errors = []
        for flags in FLAG_SETS:
            r = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(lib), str(SOURCE)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            errors.append(r.stderr.strip().splitlines()[-1:])
        else:
            raise MissingFeatureError(f"bench: compile {SOURCE.name} failed: {errors}")
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
        self.compiler = f"{version.splitlines()[0]} {' '.join(flags)}"
        self.lib = ctypes.CDLL(str(lib))
        self.lib.bnn_batch.restype = ctypes.c_int

    def runner(self, fn: str, model: Model, bits: np.ndarray):
        """A call of bnn_each or bnn_batch over rows of input bits, with the
        weights and inputs packed beforehand so that timing it times the C."""
        m = np.ascontiguousarray(layout.model_words(model))
        sizes = np.array(model.sizes, np.int32)
        inputs = np.ascontiguousarray(layout.pack_rows(bits))
        out = np.zeros(len(bits), np.uint32)
        ptr = ctypes.c_void_p
        args = (m.ctypes.data_as(ptr), sizes.ctypes.data_as(ptr), len(sizes),
                inputs.ctypes.data_as(ptr), len(bits), out.ctypes.data_as(ptr))
        call = getattr(self.lib, fn)

        def run() -> np.ndarray:
            if call(*args) != 0 and fn == "bnn_batch":
                raise MemoryError("bnn_batch: out of memory")
            return out.astype(np.int64)
        run.keep = (m, sizes, inputs)  # the buffers the pointers point into
        return run

    def close(self):
        self.dir.cleanup()


def ns_per_inference(run, n: int, repeats: int) -> list[float]:
    """Wall time of `run()` over n inputs, per input, once per repeat."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t) / n)
    return times


def measure(c: CBaseline, model: Model, bits: np.ndarray, repeats: int) -> dict:
    """ns per inference of each baseline (one figure per repeat), and whether
    each agrees with the reference on every input."""
    want = reference.predict(model, bits)
    runs = {"c_single": c.runner("bnn_each", model, bits),
            "c_batch": c.runner("bnn_batch", model, bits),
            "numpy_batch": lambda: reference.predict(model, bits)}
    out = {}
    for name, run in runs.items():
        agrees = bool((run() == want).all())
        out[name] = {"ns": ns_per_inference(run, len(bits), repeats), "agrees": agrees}
    return out
