"""`kill -9` at random points of attach, swap, set and detach: the next
command finds a consistent state, and `detach` leaves nothing behind.

Each command is first timed whole, then killed at random fractions of that
time.  A short campaign runs by default; XDPNN_LONG=1 runs dozens of points
per command.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli import ROOT, xdpnn
from xdpnn.loader import bpf_sys
from xdpnn.loader.datapath import pin_dir
from xdpnn.loader.netns import ifindex, netns
from xdpnn.trainer.model import random_model

pytestmark = [pytest.mark.root, pytest.mark.netns]
POINTS = 30 if os.environ.get("XDPNN_LONG") else 4


def prog_on(ns: str, dev: str) -> int:
    with netns(ns):
        return bpf_sys.xdp_prog_id(ifindex(dev, ns))


def killed(argv: list[str], after: float) -> None:
    p = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", *argv], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    xdpnn(*argv, check=True)
    return time.monotonic() - start


def consistent(ns: str) -> dict | None:
    """status answers without error; returns this namespace's record, if any."""
    r = xdpnn("-j", "status")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    mine = [s for s in json.loads(r.stdout) if s.get("netns") == ns]
    assert len(mine) <= 1
    return mine[0] if mine else None


def clean_up(ns: str) -> None:
    if os.path.exists(pin_dir("xv0", ns)):
        r = xdpnn("-n", ns, "detach", "xv0")
        assert r.returncode == 0, r.stderr
    assert prog_on(ns, "xv0") == 0 and prog_on(ns, "xv1") == 0
    assert not os.path.exists(pin_dir("xv0", ns))


@pytest.fixture
def models(tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"m{seed}.npz"))
        random_model([100, 7, 3], seed=seed).save(paths[-1])
    return paths


@pytest.mark.parametrize("command", ["attach", "swap", "set", "detach"])
def test_kill_9_at_random_points(veth_pair, models, command):
    ns = veth_pair
    attach = ["-n", ns, "attach", "xv0", "--model", models[0]]
    argv = {"attach": attach,
            "swap": ["-n", ns, "swap", "xv0", "--model", models[1]],
            "set": ["-n", ns, "set", "xv0", "--action", "class1=drop", "--port", "9596"],
            "detach": ["-n", ns, "detach", "xv0"]}[command]
    if command != "attach":
        xdpnn(*attach, check=True)
    whole = timed(argv)
    if command == "detach":
        xdpnn(*attach, check=True)
    rng = np.random.default_rng(len(command))
    for fraction in sorted(rng.uniform(0.05, 1.0, POINTS)):
        killed(argv, whole * fraction)
        rec = consistent(ns)
        if command == "attach":
            clean_up(ns)
        elif rec is not None and rec["state"] == "attached":
            # The datapath still works: its counters read, and it takes more work.
            assert xdpnn("-n", ns, "stats", "xv0").returncode == 0
            if command == "detach":
                continue
            assert xdpnn("-n", ns, "set", "xv0", "--action", "all=count").returncode == 0
        else:
            clean_up(ns)
            xdpnn(*attach, check=True)
    clean_up(ns)


def test_concurrent_attach_swap_set_detach_on_one_interface(veth_pair, models):
    """Three operators at once, each a random sequence of mutating commands:
    every command ends in success or a documented refusal, never a
    traceback, and the state stays one that status and detach understand."""
    import threading
    ns = veth_pair
    commands = [["-n", ns, "attach", "xv0", "--model", models[0]],
                ["-n", ns, "swap", "xv0", "--model", models[1]],
                ["-n", ns, "set", "xv0", "--action", "class1=drop"],
                ["-n", ns, "detach", "xv0"]]
    results = []

    def operator(seed):
        rng = np.random.default_rng(seed)
        for _ in range(6):
            r = xdpnn(*commands[rng.integers(len(commands))])
            results.append((r.returncode, r.stderr))

    threads = [threading.Thread(target=operator, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 18
    for code, err in results:  # 7: not attached, or already attached
        assert code in (0, 7) and "Traceback" not in err, err
    rec = consistent(ns)
    if rec is not None:
        assert rec["state"] == "attached", rec
    clean_up(ns)
