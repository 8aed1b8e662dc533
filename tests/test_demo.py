"""The README's main job: `xdpnn demo` runs end to end and leaves nothing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import HANG_GUARD_S, ROOT, xdpnn

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def leftovers(pid):
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    pins = list(Path("/sys/fs/bpf/xdpnn").glob(f"*xdpnn-demo-{pid}*"))
    return [line for line in ns.splitlines() if f"xdpnn-demo-{pid}-" in line] + pins


def leftovers_of_any_demo(r):
    """The demo's namespaces, named in its output, that still exist."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return [n for n in ns if n.startswith("xdpnn-demo-") and n in r.stdout]


def test_demo_matches_the_reference_and_cleans_up():
    r = xdpnn("demo", "--packets", "120")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernel == reference (every row of the matrix): yes" in r.stdout
    assert "accuracy in the kernel: " in r.stdout
    assert "received at the far end: 138/138 frames" in r.stdout
    assert "accuracy from the replies: " in r.stdout
    assert "120 requests, 120 replies (XDP_TX)" in r.stdout
    assert "every reply's class == reference: yes" in r.stdout
    assert "cleaning up" in r.stdout
    assert leftovers_of_any_demo(r) == []


def test_demo_cleans_up_on_ctrl_c():
    # Ctrl-C's default disposition in the child: a background job of a
    # non-interactive shell (`cmd &` in a script) inherits SIGINT ignored.
    p = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", "demo", "--packets", "2000"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + HANG_GUARD_S
    line = ""
    # Interrupt while it attaches: the latest point that is never over
    # before the signal lands, however loaded the machine is.
    while "[3/6]" not in line and time.monotonic() < deadline:
        line = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=HANG_GUARD_S)
    assert p.returncode == 130, out + err
    assert "interrupted" in err
    assert leftovers(p.pid) == []
