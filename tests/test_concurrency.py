"""Tier 3: operators that act at the same time, and commands that fail half-way.

The swap test uses two detector models (detector()): for one fixed input x,
model A answers class "A", model B class "B", and a packet that read part of
one model and part of the other answers "mixed".  Live frames of x flow
while two swappers replace the model back and forth; "mixed" must stay 0.
XDPNN_LONG=1 runs the long campaign.
"""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

from test_netns import PORT, requests, stats, topology, xdpnn  # noqa: E402
from xdpnn.loader import compile, datapath, maps  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import Model, random_model  # noqa: E402
from xdpnn.traffic.livegen import LiveGen  # noqa: E402
from xdpnn.traffic.sender import send_frames  # noqa: E402

LONG = os.environ.get("XDPNN_LONG") == "1"
N = 64
X = np.random.default_rng(3).integers(0, 2, N, dtype=np.uint8)  # the one input sent
ONES, ZEROS = np.ones(N, np.uint8), np.zeros(N, np.uint8)


def detector(which: str) -> Model:
    """Shape 64-64-3, classes A, B, mixed.  On input X:
    A: every hidden row is X at threshold 64 (the maximum): hidden = all ones.
    B: every hidden row is ~X (dot product -64), threshold 64: hidden = all zeros.
    Output: class A scores 64 only for all ones (row of ones, scale 1) in A,
    and never wins in B (scale 0, bias -100); class B likewise for all zeros
    in B; "mixed" scores a constant 63 in both.  So a packet answers A only
    if every hidden neuron and class A's output words came from model A (B
    likewise), and any other mix of the two models answers "mixed"."""
    if which == "A":
        rows, row_a, row_b, scale, bias = X, ONES, ZEROS, [1, 0, 0], [0, -100, 63]
    else:
        rows, row_a, row_b, scale, bias = 1 - X, ZEROS, ZEROS, [0, 1, 0], [-100, 0, 63]
    return Model(sizes=[N, N, 3], weights=[np.tile(rows, (N, 1)), np.stack([row_a, row_b, ONES])],
                 thresholds=[np.full(N, 64)], out_scale=np.array(scale),
                 out_bias=np.array(bias), input={"mode": "payload", "port": PORT},
                 classes=["A", "B", "mixed"], provenance={"test": f"detector {which}"}).validate()


def test_detector_models_tell_a_b_and_any_mix_apart():
    a, b = detector("A"), detector("B")
    x = X[None, :]
    assert reference.predict(a, x)[0] == 0 and reference.predict(b, x)[0] == 1

    def mixed(rows, output):
        m = Model(sizes=a.sizes, weights=[rows, output.weights[1]], thresholds=a.thresholds,
                  out_scale=output.out_scale, out_bias=output.out_bias)
        return reference.predict(m, x)[0] == 2
    # One model's hidden layer under the other's output layer.
    assert mixed(a.weights[0], b) and mixed(b.weights[0], a)
    # Hidden neurons from both models, under either output layer.
    rng = np.random.default_rng(0)
    for _ in range(200):
        take_b = rng.integers(0, 2, N).astype(bool)
        take_b[rng.integers(N)], take_b[rng.integers(N)] = True, False
        rows = np.where(take_b[:, None], b.weights[0], a.weights[0])
        assert mixed(rows, a) and mixed(rows, b)


@pytest.fixture
def detectors(tmp_path):
    paths = {}
    for which in "AB":
        paths[which] = str(tmp_path / f"detector-{which}.npz")
        detector(which).save(paths[which])
    return paths


SWAPPER = """
import sys, time
from xdpnn.loader import datapath
ns, n, max_seconds, paths = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
started, done = time.monotonic(), 0
while done < n and time.monotonic() - started < max_seconds:
    datapath.swap("d0", ns, paths[done % 2])
    done += 1
print(done)
"""


def test_concurrent_swaps_never_mix_two_models(detectors):
    """Two swapper processes (truly concurrent, unlike threads under one GIL)."""
    swaps_each = 10000 if LONG else 400
    max_seconds = 900 if LONG else 30
    with topology(drop=True) as t:
        xdpnn("-n", t.dut, "attach", "d0", "--peer", "d1", "--model", detectors["A"],
              "--action", "all=drop")
        with LiveGen(t.gen, "g0", [reference.bytes_from_bits(X)], PORT) as gen:
            started, sent = time.monotonic(), 0
            # Each starts on the model the other ends on: back-to-back swaps
            # in both directions, from both processes.
            swappers = [subprocess.Popen(
                [sys.executable, "-c", SWAPPER, t.dut, str(swaps_each), str(max_seconds),
                 *(detectors[w] for w in order)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True) for order in ("BA", "AB")]
            try:
                while any(p.poll() is None for p in swappers):
                    sent += gen.send(1 << 16, max_seconds=5).frames
                    assert time.monotonic() - started < max_seconds + 60, "swappers hang"
            finally:
                for p in swappers:
                    if p.poll() is None:
                        p.kill()
            outs = [p.communicate() for p in swappers]
        assert all(p.returncode == 0 for p in swappers), [err for _, err in outs]
        s = stats(t)
    swaps = sum(int(out) for out, _ in outs)
    classes = s["classes"]
    print(f"\nconcurrent swaps: {swaps} swaps, {sent} frames sent, "
          f"{s['input']['classified']} classified, {classes}, "
          f"{time.monotonic() - started:.1f} s")
    assert classes["mixed"] == 0
    assert classes["A"] > 0 and classes["B"] > 0
    assert s["input"]["classified"] == classes["A"] + classes["B"]


def kernel_actions(t) -> list[str]:
    with datapath.Pinned("d0", t.dut) as p:
        cfg = compile.read_config(p.fds["nn_config"])
        n = len(p.record["model"]["classes"])
    return [maps.ACTIONS[cfg.action[k]] for k in range(n)]


def status_of(t) -> dict:
    return [r for r in json.loads(xdpnn("-j", "status").stdout) if r["netns"] == t.dut][0]


def test_swap_with_an_oversized_record_changes_nothing(tmp_path, model_file_pair):
    (old, old_path), (_, new_path) = model_file_pair
    big = random_model(old.sizes, seed=2)
    big.classes = [str(k) * 7000 for k in range(old.sizes[-1])]
    big_path = str(tmp_path / "big.npz")
    big.save(big_path)
    with topology() as t:
        # attach refuses it before compiling: nothing pinned, nothing attached.
        r = xdpnn("-n", t.dut, "attach", "d0", "--model", big_path, check=False)
        assert r.returncode == 3 and "class names take" in r.stderr, r.stderr
        assert not os.path.exists(f"/sys/fs/bpf/xdpnn/d0@{t.dut}")

        xdpnn("-n", t.dut, "attach", "d0", "--peer", "d1", "--model", old_path)
        before = status_of(t)
        r = xdpnn("-n", t.dut, "swap", "d0", "--model", big_path, check=False)
        assert r.returncode == 3 and "nothing changed" in r.stderr, r.stderr
        after = status_of(t)
        assert after["model"] == before["model"] and after["model"]["path"] == old_path
        # The kernel still classifies with the old model.
        bits, frames = requests(old, 40, seed=7)
        send_frames(t.gen, "g0", frames)
        want = np.bincount(reference.predict(old, bits), minlength=old.sizes[-1])
        assert list(stats(t)["classes"].values()) == want.tolist()


@pytest.fixture
def model_file_pair(tmp_path):
    out = []
    for seed in (1, 2):
        m = random_model([256, 32, 16, 4], seed=seed)
        m.classes = ["1", "0", "3", "2"]  # names that are also other classes' indexes
        path = str(tmp_path / f"m{seed}.npz")
        m.save(path)
        out.append((m, path))
    return out


def test_set_changes_only_the_classes_named(model_file_pair):
    (_, path), _ = model_file_pair
    with topology() as t:
        xdpnn("-n", t.dut, "attach", "d0", "--model", path, "--action", "1=drop")
        xdpnn("-n", t.dut, "set", "d0", "--action", "0=pass")
        assert status_of(t)["actions"] == {"1": "drop", "0": "pass", "3": "count", "2": "count"}
        assert kernel_actions(t) == ["drop", "pass", "count", "count"]


def test_swap_racing_set_loses_no_update(model_file_pair):
    (_, path_a), (_, path_b) = model_file_pair
    rounds = 200
    with topology() as t:
        xdpnn("-n", t.dut, "attach", "d0", "--model", path_a)
        for i in range(rounds):
            action = ("drop", "pass")[i % 2]
            start, errors = threading.Barrier(2), []

            def run(command, *args):
                try:
                    start.wait()
                    command("d0", t.dut, *args)
                except BaseException as e:
                    errors.append(e)
            threads = [threading.Thread(target=run, args=(datapath.swap, (path_a, path_b)[i % 2])),
                       threading.Thread(target=run, args=(datapath.set_options, [f"3={action}"],
                                                          None))]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert not errors, errors
            with datapath.Pinned("d0", t.dut) as p:
                recorded = list(p.record["actions"].values())
            assert recorded == kernel_actions(t), f"round {i}"
            assert recorded[2] == action, f"round {i}: the set was lost"
