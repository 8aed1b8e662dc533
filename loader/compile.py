"""Compile + load: bpf/xdpnn.c built by BCC for one model's shape, its maps
created and filled, nothing attached yet.  Used by attach, predict, verify
and the tests alike, so all of them run the same program.
"""
from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import re
import signal
import socket
import sys
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
    """A loaded, unattached XDP program and its maps (name -> fd).  The
    kernel objects live as long as these descriptors (or pins of them)."""
    prog_fd: int
    maps: dict[str, int]
    model: Model
    cflags: list[str]
    record_input: bool
    methods: tuple[str, ...]  # of each hidden layer (loader/layout.py)

    def close(self):
        for fd in [self.prog_fd, *self.maps.values()]:
            os.close(fd)
        self.maps = {}


def source_and_flags(model: Model, record_input: bool = False, defines: tuple[str, ...] = (),
                     methods=None) -> tuple[str, list[str]]:
    """defines: the variants of bpf/xdpnn.c's header comment (NN_FORWARD_ONLY, ...);
    methods: each hidden layer's (tests force them; None is the codegen's choice)."""
    return SOURCE.read_text(), (layout.cflags(model, record_input, methods)
                                + [f"-D{d}" for d in defines] + [f"-I{BPF_DIR}"])


def check_kernel_headers() -> None:
    """BCC compiles against the running kernel's headers; say so plainly."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    build_dir = f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(f"{build_dir}/include"):
        raise MissingFeatureError(f"compile: no kernel headers at {build_dir}: install "
                                  "linux-headers for this kernel (`sudo make setup` does it)")


def build(model: Model, record_input: bool = False, defines: tuple[str, ...] = (),
          methods=None, added_to: str | None = None, model_id: int = 0,
          extra_maps: tuple[str, ...] = (), what: str | None = None,
          cpumap: bool = False) -> Program:
    """Compiles and loads the program for model, puts the model in force.
    methods forces each hidden layer's method (tests, measurements); a
    program built so must be given models with write_model(..., methods).
    added_to: the pin folder of an attached serving program; the program
    built serves model_id beside it and shares its nn_config and nn_serve
    (bpf/tailcall.h), which this build leaves as they are; without NN_SERVE
    and with a model_id, it is a model chosen by port, with an nn_config of
    its own that the caller fills (loader/multimodel.py).  Stages
    (loader/stages.py) pass their flags in defines, the maps they hand out
    besides the usual ones in extra_maps, and name themselves in what;
    cpumap: loaded to run as a CPUMAP entry's program (a later CPUMAP stage)."""
    if sys.byteorder != "little":
        raise MissingFeatureError("compile: the weight layout (docs/model-format.md) is "
                                  "little-endian, and this CPU is big-endian")
    import_bcc()  # here, so that a missing BCC is a clear error, and the child has it
    check_kernel_headers()
    methods = layout.check_methods(model.sizes, methods, model.input_bits > 1)
    if added_to:
        defines = (*defines, f"NN_MODEL_ID={model_id}", f'NN_PIN_DIR="{added_to}"')
    text, cflags = source_and_flags(model, record_input, defines, methods)
    own = maps.MAP_NAMES if not added_to else \
        maps.PORT_MODEL_MAP_NAMES if model_id and "NN_SERVE" not in defines else \
        maps.ADDED_MAP_NAMES
    names = ("nn_model_words",) + own + (("nn_last",) if record_input else ()) \
        + tuple(extra_maps)
    if model.mode == "flow":
        names += ("nn_flows", "nn_flow_clock")
    what = what or f"model {model.shape}" + (f" (id {model_id})" if added_to else "")
    prog_fd, fds = load_in_child(text, cflags, "xdpnn", names, what, cpumap)
    prog = Program(prog_fd=prog_fd, maps=fds, model=model, cflags=cflags,
                   record_input=record_input, methods=methods)
    try:
        fill_model(fds["nn_model_words"], model, methods)  # the template: the first model's map
        put_model(fds["nn_model"], fds["nn_model_words"])
        if not added_to:
            # Ready to classify as built: the model's request port, all counts.
            port = model.input.get("port", DEFAULT_PORT)
            write_config(fds["nn_config"], maps.Config(udp_port=port))
    except BaseException:
        prog.close()
        raise
    return prog


def load_in_child(text: str, cflags: list[str], func: str, map_names: tuple[str, ...],
                  what: str, cpumap: bool = False) -> tuple[int, dict[str, int]]:
    """Compiles and loads an XDP program in a child process and returns the
    program's and maps' file descriptors, passed back over a unix socket.

    LLVM ends the process it runs in on a fatal error (abort, no exception):
    in a child, that is a BuildError with LLVM's message, not a dead command.
    The child only compiles, loads and exits (it is forked, so it has BCC
    loaded already, and nothing else runs in it)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            parent.close()
            os.dup2(log.fileno(), 2)  # what libbcc, clang and the verifier print
            faulthandler.disable()  # a crash here is the parent's to report
            try:
                _compile_and_send(child, text, cflags, func, map_names, cpumap)
            finally:
                os._exit(0)
        child.close()
        try:
            msg, fds, _, _ = socket.recv_fds(parent, 1 << 16, 1 + len(map_names))
        except BaseException:  # Ctrl-C: the compile is no longer wanted
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            parent.close()
            _, status = os.waitpid(pid, 0)
        log.seek(0)
        printed = log.read().decode(errors="replace")
    if not msg:  # the child died before it could answer
        how = (signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status)
               else f"exit {os.WEXITSTATUS(status)}")
        fatal = [ln for ln in printed.splitlines() if "LLVM ERROR" in ln or "fatal" in ln]
        raise BuildError(f"compile {SOURCE.name} for {what}: the compiler crashed ({how}): "
                         f"{(fatal or [_summary(printed, 'no message')])[0].strip()}")
    reply = json.loads(msg)
    if reply:
        for fd in fds:
            os.close(fd)
        detail = reply.get("why") or _summary(printed, reply["exception"])
        raise BuildError({"compile": f"compile {SOURCE.name} for {what}: {detail}",
                          "load": f"load XDP program for {what}: verifier rejected it: {detail}",
                          "layout": reply["exception"]}[reply["step"]])
    return fds[0], dict(zip(map_names, fds[1:]))


def _compile_and_send(sock: socket.socket, text: str, cflags: list[str], func: str,
                      map_names: tuple[str, ...], cpumap: bool = False) -> None:
    """In the child: BCC's compile and load; the fds, or what failed, to sock."""
    BPF = import_bcc()
    step, why = "compile", None
    try:
        bpf = BPF(text=text, cflags=cflags)
        step = "load"
        try:
            # A CPUMAP entry takes only programs loaded for it (expected_attach_type).
            fn = bpf.load_func(func, BPF.XDP, attach_type=35 if cpumap else -1)  # BPF_XDP_CPUMAP
        except Exception as e:
            if "Argument list too long" in str(e):  # E2BIG: BCC says "Program too large"
                why = ("it needs more than the verifier's 1,000,000 processed instructions; "
                       "use smaller layers (docs/datapath.md, 'Verifier limits')")
            raise
        step = "layout"
        check_layouts(bpf, map_names)
    except Exception as e:
        sock.send(json.dumps({"step": step, "exception": str(e), "why": why}).encode())
        return
    socket.send_fds(sock, [b"{}"], [fn.fd] + [bpf[n].map_fd for n in map_names])


def check_layouts(bpf, map_names: tuple[str, ...]) -> None:
    """The ctypes mirrors in loader/maps.py must match what BCC compiled."""
    for name, mirror in maps.MIRRORS.items():
        if name not in map_names:
            continue
        table = bpf[name]
        leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables wrap the struct
        got = [(f[0], ctypes.sizeof(f[1])) for f in leaf._fields_]
        want = [(f[0], ctypes.sizeof(f[1])) for f in mirror._fields_]
        if got != want or ctypes.sizeof(leaf) != ctypes.sizeof(mirror):
            raise BuildError(f"layout of map {name}: bpf/xdpnn_shared.h has {got}, "
                             f"loader/maps.py has {want}")


def fill_model(inner_fd: int, model: Model, methods=None) -> None:
    """Writes model into an inner map that no packet reads yet, laid out for
    the methods the program was built with (None: the codegen's choice, a
    function of the shape alone, so every later swap agrees with attach)."""
    words = layout.model_words(model, methods)
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


def new_model_map(outer_fd: int, model: Model, methods=None) -> int:
    """A new inner map like the one in force, filled with model, not yet in
    force; the caller closes the fd it returns."""
    current = bpf_sys.map_fd_by_id(model_map_id(outer_fd))
    try:
        fd = bpf_sys.map_create_like(current, "nn_model_words")
    finally:
        os.close(current)
    try:
        fill_model(fd, model, methods)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_model(outer_fd: int, model: Model, methods=None) -> None:
    """Puts model in force in place of the one there (tests; swap does it in steps)."""
    fd = new_model_map(outer_fd, model, methods)
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
