"""The `xdpnn` command run as a user runs it: a child process, from the
project's root.

Time limits here guard against hangs; they are not speed checks (speed is
measured by `xdpnn bench`).  In an emulated VM a BPF compile takes most of a
minute, so the limit is wide.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 1800


def xdpnn(*args, check: bool = False, user: int | None = None, memory_limit: int | None = None,
          timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Runs `xdpnn ARGS`; with check, a non-zero exit fails the test with stderr.

    memory_limit caps the child's address space (RLIMIT_AS, bytes): past it,
    allocations fail instead of the machine swapping."""
    def preexec():
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if user is not None:
            os.setgid(user)
            os.setuid(user)

    r = subprocess.run([sys.executable, "-m", "xdpnn.loader.cli", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout,
                       preexec_fn=preexec if user is not None or memory_limit else None)
    if check and r.returncode != 0:
        raise AssertionError(f"xdpnn {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
    return r
