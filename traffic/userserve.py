"""User-space servers of the serving protocol (docs/serving.md): the same
requests and the same reply payloads as `attach --serve`, answered from a
UDP socket, to compare XDP with what user space can do.

    c       traffic/serve_user.c: traffic/bnn_fixed.c compiled now for the
            model (sizes as constants, -O2 -march=native, hardware
            popcount), recvmmsg/sendmmsg batches
    python  a socket loop over trainer/serve.py and the reference inference

Either runs as a child process, in a network namespace and on a CPU if
asked, until stopped or for at most max_seconds:

    with UserServer(model, impl="c", netns="server", cpu=1) as srv:
        ...                      # requests to UDP port 9595 of the namespace
    print(srv.counters)          # {"requests": ..., "replies": ..., "status": {...}}
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from xdpnn.bpf.shared import SERVE_STATUS
from xdpnn.loader import layout
from xdpnn.loader.errors import BuildError, MissingFeatureError, UsageError, XdpnnError
from xdpnn.loader.netns import netns as entered
from xdpnn.trainer.model import DEFAULT_PORT, Model

IMPLS = ("c", "python")
SOURCE = resources.files("xdpnn.traffic") / "serve_user.c"
# -march=native brings popcnt; -mpopcnt is the fallback for a compiler that
# does not know the CPU (as traffic/baseline.py does).
FLAG_SETS = (["-O2", "-march=native"], ["-O2", "-mpopcnt"])
READY_SECONDS = 30.0


def build_c(model: Model, folder: Path) -> tuple[Path, Path]:
    """(executable, weight words file) of the C server for this model."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise MissingFeatureError("serve-userspace: no C compiler (cc/gcc) for the C server")
    hz = layout.horizontal(model.sizes)  # the layout bnn_fixed.c reads
    words = folder / "model.words"
    layout.model_words(model, hz).astype("<u8").tofile(words)
    exe = folder / "serve_user"
    src = Path(str(SOURCE))
    bpf = Path(str(resources.files("xdpnn.bpf") / "xdpnn_shared.h")).parent
    for flags in FLAG_SETS:
        cmd = [cc, *flags, "-DBNN_SIMD=0", *layout.cflags(model, methods=hz), f"-I{bpf}",
               f"-I{src.parent}", "-o", str(exe), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            return exe, words
    last = (r.stderr.strip().splitlines() or ["no message"])[-1]
    raise BuildError(f"serve-userspace: compile {src.name} for model {model.shape}: {last}")


class UserServer:
    """A user-space server of model on UDP port `port` (both IPv4 and IPv6
    where the namespace has IPv6), as a child process."""

    def __init__(self, model: Model, port: int = DEFAULT_PORT, impl: str = "c",
                 netns: str | None = None, cpu: int | None = None,
                 max_seconds: float | None = None):
        if impl not in IMPLS:
            raise UsageError(f"serve-userspace: --impl {impl}: expected one of {', '.join(IMPLS)}")
        if model.mode != "payload":
            raise UsageError(f"serve-userspace: model {model.shape} is a {model.mode}-mode "
                             "model; serving reads payload-mode inputs")
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            raise UsageError(f"serve-userspace: --cpu {cpu}: not a CPU this process may use "
                             f"({sorted(os.sched_getaffinity(0))})")
        self.model, self.port, self.impl = model, port, impl
        self.netns, self.cpu, self.max_seconds = netns, cpu, max_seconds
        self.proc: subprocess.Popen | None = None
        self.counters: dict | None = None
        self.error = ""  # the server's stderr, once it ended
        self._dir = tempfile.TemporaryDirectory(prefix="xdpnn-serve-")

    def command(self) -> list[str]:
        folder = Path(self._dir.name)
        limit = str(self.max_seconds or 0)
        if self.impl == "c":
            exe, words = build_c(self.model, folder)
            return [str(exe), str(self.port), str(words), limit]
        path = folder / "model.npz"
        self.model.save(path)
        return [sys.executable, "-m", "xdpnn.traffic.userserve", str(path), str(self.port),
                limit]

    def start(self) -> "UserServer":
        try:
            cmd = self.command()
            with entered(self.netns):  # the child inherits this thread's namespace
                self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, start_new_session=True)
        except BaseException:
            self._dir.cleanup()
            raise
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        ready = select.select([self.proc.stdout], [], [], READY_SECONDS)[0]
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop()
            why = (self.error or "no answer").splitlines()[-1]
            raise XdpnnError(f"serve-userspace: start the {self.impl} server on port "
                             f"{self.port}: {why}")
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait(self, timeout: float | None = None) -> dict | None:
        """Waits for the server to end (max_seconds); its counters."""
        self.proc.wait(timeout)
        return self.stop()

    def stop(self) -> dict | None:
        """Ends the server (SIGTERM), and returns its counters."""
        if self.proc is None:
            return self.counters
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, self.error = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, self.error = self.proc.communicate()
        self.proc = None
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if lines:
            c = json.loads(lines[-1])
            self.counters = {"requests": c["requests"], "replies": c["replies"],
                             "status": dict(zip(SERVE_STATUS, c["status"]))}
        self._dir.cleanup()
        return self.counters

    def __enter__(self) -> "UserServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- the Python server (run as `python -m xdpnn.traffic.userserve MODEL PORT SECONDS`) ----

def python_server(model: Model, port: int, max_seconds: float) -> dict:
    """Answers requests one datagram at a time until SIGTERM or max_seconds."""
    from xdpnn.trainer import serve
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # IPv6 off here
        sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)  # wakes to check the deadline
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    counters = {"requests": 0, "replies": 0, "status": [0] * len(SERVE_STATUS)}
    end = time.monotonic() + max_seconds if max_seconds > 0 else float("inf")
    print("ready", flush=True)
    while not stop and time.monotonic() < end:
        try:
            payload, peer = sock.recvfrom(65535)
        except (socket.timeout, InterruptedError):
            continue
        status, _, cls, scores = serve.request_status({0: model}, payload)
        counters["requests"] += 1
        counters["status"][SERVE_STATUS.index(status)] += 1
        if status in serve.DROPPED:
            continue
        try:
            sock.sendto(serve.reply_body(payload[:serve.HDR], status, cls, scores), peer)
            counters["replies"] += 1
        except OSError:
            pass  # a full buffer or an unreachable peer: that reply is lost
    return counters


if __name__ == "__main__":
    from xdpnn.trainer import model as model_file
    print(json.dumps(python_server(model_file.load(sys.argv[1]), int(sys.argv[2]),
                                   float(sys.argv[3]))), flush=True)
