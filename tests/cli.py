"""The `xdpnn` command run as a user runs it: a child process, from the
project's root.

Time limits here guard against hangs; they are not speed checks (speed is
measured by `xdpnn bench`).  In an emulated VM a BPF compile takes most of a
minute, so the limit is wide.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 1800


def xdpnn(*args, check: bool = False, user: int | None = None) -> subprocess.CompletedProcess:
    """Runs `xdpnn ARGS`; with check, a non-zero exit fails the test with stderr."""
    def drop_privileges():
        os.setgid(user)
        os.setuid(user)

    r = subprocess.run([sys.executable, "-m", "xdpnn.loader.cli", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=HANG_GUARD_S,
                       preexec_fn=drop_privileges if user is not None else None)
    if check and r.returncode != 0:
        raise AssertionError(f"xdpnn {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
    return r
