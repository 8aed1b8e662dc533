"""Compile + load: bpf/xdpnn.c built by BCC for one model's shape, its maps
created and filled, nothing attached yet.  Used by attach, predict, verify
and the tests alike, so all of them run the same program.
"""
from __future__ import annotations

import ctypes
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

from xdpnn.loader import bpf_sys, layout, maps
from xdpnn.loader.errors import BuildError, MissingFeatureError
from xdpnn.trainer.model import DEFAULT_PORT, Model

# Package data; installed on a file system, so BCC can read #includes from it (-I).
BPF_DIR = resources.files("xdpnn.bpf")
SOURCE = BPF_DIR / "xdpnn.c"


def import_bcc():
    try:
        from bcc import BPF  # Debian's python3-bpfcc
    except ImportError:
        raise MissingFeatureError(
            "compile: the bcc Python module is missing: install Debian's python3-bpfcc and use "
            "/usr/bin/python3 (or a venv made with --system-site-packages)") from None
    return BPF


@contextmanager
def captured_stderr():
    """Collects what libbcc and clang print on fd 2 (diagnostics, verifier log)."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        text = []
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def _summary(log: str, fallback: str) -> str:
    """The line of a compiler or verifier log that says what went wrong."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    # A verifier log ends with its statistics; the error is the line before.
    stats = [i for i, ln in enumerate(lines) if ln.startswith("processed ") and " insns " in ln]
    if stats and stats[-1] > 0:
        return lines[stats[-1] - 1]
    for pattern in (r"error:", r"(too large|too complex|limit|invalid|out of range|"
                                r"unbounded|exceeds|R\d+ )"):
        hits = [ln for ln in lines if re.search(pattern, ln)]
        if hits:
            return hits[0] if pattern == "error:" else hits[-1]
    return lines[-1] if lines else fallback


@dataclass
class Program:
    """A loaded, unattached XDP program and its maps (name -> fd)."""
    bpf: object
    prog_fd: int
    maps: dict[str, int]
    model: Model
    cflags: list[str]
    record_input: bool

    def close(self):
        self.bpf.cleanup()


def source_and_flags(model: Model, record_input: bool = False,
                     defines: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """defines: the variants of bpf/xdpnn.c's header comment (NN_FORWARD_ONLY, ...)."""
    return SOURCE.read_text(), (layout.cflags(model, record_input) + [f"-D{d}" for d in defines]
                                + [f"-I{BPF_DIR}"])


def check_kernel_headers() -> None:
    """BCC compiles against the running kernel's headers; say so plainly."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    build_dir = f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(f"{build_dir}/include"):
        raise MissingFeatureError(f"compile: no kernel headers at {build_dir}: install "
                                  "linux-headers for this kernel (`sudo make setup` does it)")


def build(model: Model, record_input: bool = False, defines: tuple[str, ...] = ()) -> Program:
    """Compiles and loads the program for model, puts the model in force."""
    BPF = import_bcc()
    check_kernel_headers()
    text, cflags = source_and_flags(model, record_input, defines)
    with captured_stderr() as log:
        try:
            bpf = BPF(text=text, cflags=cflags)
        except Exception as e:
            err = e
        else:
            err = None
    if err is not None:
        raise BuildError(f"compile {SOURCE.name} for model {model.shape}: "
                         f"{_summary(log[0], str(err))}")
    with captured_stderr() as log:
        try:
            fn = bpf.load_func("xdpnn", BPF.XDP)
        except Exception as e:
            err = e
        else:
            err = None
    if err is not None:
        bpf.cleanup()
        if "Argument list too long" in str(err):  # E2BIG: BCC says "Program too large"
            why = ("it needs more than the verifier's 1,000,000 processed instructions; "
                   "use smaller layers (docs/datapath.md, 'Verifier limits')")
        else:
            why = _summary(log[0], str(err))
        raise BuildError(f"load XDP program for model {model.shape}: verifier rejected it: "
                         f"{why}")
    prog = Program(bpf=bpf, prog_fd=fn.fd, maps={n: bpf[n].map_fd for n in maps.MAP_NAMES},
                   model=model, cflags=cflags, record_input=record_input)
    try:
        check_layouts(bpf)
        inner = bpf["nn_model_words"].map_fd  # the template is the first model's map
        fill_model(inner, model)
        put_model(prog.maps["nn_model"], inner)
        # Ready to classify as built: the model's request port, all counts.
        write_config(prog.maps["nn_config"],
                     maps.Config(udp_port=model.input.get("port", DEFAULT_PORT)))
    except BaseException:
        prog.close()
        raise
    return prog


def check_layouts(bpf) -> None:
    """The ctypes mirrors in loader/maps.py must match what BCC compiled."""
    for name, mirror in maps.MIRRORS.items():
        table = bpf[name]
        leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables wrap the struct
        got = [(f[0], ctypes.sizeof(f[1])) for f in leaf._fields_]
        want = [(f[0], ctypes.sizeof(f[1])) for f in mirror._fields_]
        if got != want or ctypes.sizeof(leaf) != ctypes.sizeof(mirror):
            raise BuildError(f"layout of map {name}: bpf/xdpnn_shared.h has {got}, "
                             f"loader/maps.py has {want}")


def fill_model(inner_fd: int, model: Model) -> None:
    """Writes model into an inner map that no packet reads yet."""
    words = layout.model_words(model)
    size = bpf_sys.map_info(inner_fd).value_size
    if size != words.nbytes:
        raise BuildError(f"fill map nn_model_words: value size is {size} bytes, model "
                         f"{model.shape} needs {words.nbytes}")
    bpf_sys.map_update(inner_fd, 0, words.tobytes(), "nn_model_words")


def put_model(outer_fd: int, inner_fd: int) -> None:
    """Puts an inner map in force: one update, atomic for packets."""
    bpf_sys.map_update(outer_fd, 0, ctypes.c_uint32(inner_fd), "nn_model")


def model_map_id(outer_fd: int) -> int:
    """The id of the inner map in force (a new one after every swap)."""
    return int.from_bytes(bpf_sys.map_lookup(outer_fd, 0, 4, "nn_model"), "little")


def new_model_map(outer_fd: int, model: Model) -> int:
    """A new inner map like the one in force, filled with model, not yet in
    force; the caller closes the fd it returns."""
    current = bpf_sys.map_fd_by_id(model_map_id(outer_fd))
    try:
        fd = bpf_sys.map_create_like(current, "nn_model_words")
    finally:
        os.close(current)
    try:
        fill_model(fd, model)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_model(outer_fd: int, model: Model) -> None:
    """Puts model in force in place of the one there (tests; swap does it in steps)."""
    fd = new_model_map(outer_fd, model)
    try:
        put_model(outer_fd, fd)
    finally:
        os.close(fd)


def read_config(map_fd: int) -> maps.Config:
    return maps.Config.from_buffer_copy(
        bpf_sys.map_lookup(map_fd, 0, ctypes.sizeof(maps.Config), "nn_config"))


def write_config(map_fd: int, cfg: maps.Config) -> None:
    bpf_sys.map_update(map_fd, 0, bytes(cfg), "nn_config")


def read_serve_counters(map_fd: int) -> list[dict]:
    """nn_serve: one entry per model id below maps.SRV["models"], then the rest."""
    n = bpf_sys.possible_cpus()
    return [maps.sum_serve(bpf_sys.map_lookup(map_fd, k, n * ctypes.sizeof(maps.ServeCounters),
                                              "nn_serve"), n) for k in range(maps.SERVE_ENTRIES)]


def read_counters(map_fd: int, side: int | None = None) -> dict:
    """Counters of one ingress side (0: IFACE, 1: the peer), or of both summed."""
    n = bpf_sys.possible_cpus()
    sides = range(maps.SIDES) if side is None else [side]
    per_side = [maps.sum_counters(bpf_sys.map_lookup(
        map_fd, s, n * ctypes.sizeof(maps.Counters), "nn_counters"), n) for s in sides]
    return {k: sum(c[k] for c in per_side) for k in per_side[0]}
