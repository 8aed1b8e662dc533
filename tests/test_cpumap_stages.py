"""Packet-carried stages (docs/partitioning.md, "On the wire"): each stage
run alone on the frame the one before it returned, bit-exact against the
reference; the refusals of frames crafted to carry wrong activations; and
CPUMAP chaining, stage 0 on the receiving CPU and stage 1 on another, with
real frames through veths.
"""
from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import time

import cli
import numpy as np
import pytest
from xdpnn.loader import bpf_sys, compile, layout, maps, plan, stages
from xdpnn.trainer import reference
from xdpnn.trainer.model import DEFAULT_PORT, random_model
from xdpnn.traffic import packets
from xdpnn.traffic.sender import Capture

SMALL = [64, 48, 40, 36, 33, 5]


def frames(model, n, seed):
    bits = np.random.default_rng(seed).integers(0, 2, (n, model.sizes[0]), dtype=np.uint8)
    return bits, [packets.request(reference.bytes_from_bits(b), DEFAULT_PORT) for b in bits]


def classes(built):
    return compile.read_counters(built.maps["nn_counters"])["class_packets"].copy()


WIDE = [100, 200, 130, 5]


@pytest.mark.root
@pytest.mark.parametrize("sizes,cuts", [
    (SMALL, [(0, 2), (2, 5)]), (SMALL, [(0, 1), (1, 3), (3, 4), (4, 5)]),
    # cuts inside layers: the done neurons ride behind the layer's input
    (WIDE, [(0, 0, 0, 192), (0, 1, 192, 64), (1, 1, 64, 128), (1, 3, 128, 0)])],
    ids=["0-2|2-5", "0-1|1-3|3-4|4-5", "split"])
def test_carried_activations_bit_exact(sizes, cuts):
    """Stage s's output frame is stage s+1's input: the frame grows by the
    header and words the docs give, the last stage gives the reference's
    class and returns the frame as it came, on 2,000 requests."""
    m = random_model(sizes, seed=5)
    cuts = [stages.Cut(*c) for c in cuts]
    built = stages.build_unpinned(m, cuts, link=False, carry=True)
    try:
        bits, reqs = frames(m, 2000, seed=1)
        want = reference.predict(m, bits)
        d = stages.digest(m)
        for i, f in enumerate(reqs):
            frame = f
            for s, p in enumerate(built.stages[:-1]):
                verdict, _, frame = bpf_sys.test_run(p.prog_fd, frame)
                nxt, done = cuts[s].end, cuts[s].end_neuron
                grew = stages.carried(m.sizes[nxt], done=done)
                assert len(frame) == len(f) + grew
                assert frame[:16] == struct.pack("<QHHI", d, nxt, done // 64, m.sizes[nxt])
                assert frame[grew:] == f
            before = classes(built)
            verdict, _, out = bpf_sys.test_run(built.stages[-1].prog_fd, frame)
            got = classes(built) - before
            assert got.sum() == 1 and int(np.argmax(got)) == want[i], i
            assert out == f and maps.VERDICTS[verdict] == "pass"
        assert len(set(want.tolist())) >= 3
        errors = stages.read_errors(built.maps["nn_stage_err"])
        # Unlinked, every handing stage finds no next stage: counted, dropped.
        assert errors == {**{k: 0 for k in stages.ERRORS}, "no_next": 2000 * (len(cuts) - 1)}
    finally:
        built.close()


@pytest.mark.root
def test_carried_refusals_and_counters():
    """Stage 1 on frames crafted to carry another digest, another layer,
    another activation count, or fewer bytes than the header says: dropped,
    each counted under its reason; the right frame classifies."""
    m = random_model([64, 48, 40, 6], seed=7)
    built = stages.build_unpinned(m, [(0, 2), (2, 3)], link=False, carry=True)
    try:
        stage1 = built.stages[1].prog_fd
        err = built.maps["nn_stage_err"]
        d = stages.digest(m)
        rng = np.random.default_rng(0)
        _, (req,) = frames(m, 1, seed=3)
        h = rng.integers(0, 2, 40, dtype=np.uint8)  # the last hidden layer's activations
        words = layout.pack_rows(h[None, :]).ravel().astype("<u8").tobytes()

        def carrying(dig, layer, nbits, w=words, group=0):
            return struct.pack("<QHHI", dig, layer, group, nbits) + w + req

        want = {k: 0 for k in stages.ERRORS}
        crafted = {"bad_digest": carrying(d ^ 1, 2, 40), "bad_layer": carrying(d, 1, 40),
                   "bad_bits": carrying(d, 2, 41),
                   # the layer's neurons from group 1 on: another stage's share
                   "bad_layer ": carrying(d, 2, 40, words + words, group=1),
                   # a header that says 40 activations (8 bytes) before 2 bytes of frame
                   "truncated": struct.pack("<QII", d, 2, 40) + words[:2]}
        for reason, frame in crafted.items():
            verdict, _, _ = bpf_sys.test_run(stage1, frame)
            assert maps.VERDICTS[verdict] == "drop", reason
            want[reason.strip()] += 1
            assert stages.read_errors(err) == want
        # too short for a header and an Ethernet header
        verdict, _, _ = bpf_sys.test_run(stage1, b"\0" * 20)
        want["truncated"] += 1
        assert maps.VERDICTS[verdict] == "drop" and stages.read_errors(err) == want
        # The right frame: the class the reference gives these activations.
        before = classes(built)
        verdict, _, out = bpf_sys.test_run(stage1, carrying(d, 2, 40))
        got = classes(built) - before
        a = 40 - 2 * (h[None, :] != m.weights[-1]).sum(axis=1)
        scores = m.out_scale.astype(np.int64) * a + m.out_bias
        assert got.sum() == 1 and int(np.argmax(got)) == int(np.argmax(scores))
        assert out == req and stages.read_errors(err) == want
    finally:
        built.close()


def per_cpu_classes(fd):
    """Classes counted on each CPU, both ingress sides summed."""
    n = bpf_sys.possible_cpus()
    size = ctypes.sizeof(maps.Counters)
    out = np.zeros((n, maps.MAX_CLASSES), np.int64)
    for side in range(maps.SIDES):
        raw = bpf_sys.map_lookup(fd, side, n * size, "nn_counters")
        for cpu in range(n):
            one = maps.sum_counters(raw[cpu * size:(cpu + 1) * size], 1)
            out[cpu] += one["class_packets"].astype(np.int64)
    return out


def one_by_one_through_cpu1(t, pdir, reqs, want):
    """Sends reqs one at a time into g0 from CPU 0 (veth receives on the
    sending CPU: stage 0 runs there); each must arrive intact at s0 and be
    counted on CPU 1 (the last stage, by CPUMAP) under the reference's class."""
    from xdpnn.loader.netns import netns

    cfd = bpf_sys.get_pinned(f"{pdir}/nn_counters")
    with netns(t.gen):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind(("g0", 0))
    affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {0})
        with Capture(t.sink, "s0") as cap:
            deadline = time.monotonic() + 120
            for i, f in enumerate(reqs):
                assert time.monotonic() < deadline, f"only {i} frames in 120 s"
                before = per_cpu_classes(cfd)
                tx.send(f)
                got = cap.collect(i + 1, max_seconds=2.0)
                assert len(got) == i + 1 and got[i] == f, f"frame {i}"
                diff = per_cpu_classes(cfd) - before
                assert diff.sum() == 1 and diff[1, want[i]] == 1, f"frame {i}: {diff}"
    finally:
        os.sched_setaffinity(0, affinity)
        tx.close()
        os.close(cfd)


@pytest.mark.netns
@pytest.mark.skipif(len(stages.online_cpus()) < 2, reason="needs 2 CPUs")
def test_cpumap_stages_real_frames(tmp_path):
    """gen -> d0 (stage 0 on CPU 0, where the sender runs; stage 1 on CPU 1
    by CPUMAP, forwarding to d1) -> sink: 2,000 requests one at a time, each
    arriving intact, counted on CPU 1 under the reference's class."""
    from test_netns import stats, topology

    m = random_model(SMALL, seed=9)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 2), tmp_path / "p.json")
    bits, reqs = frames(m, 2000, seed=5)
    want = reference.predict(m, bits)
    with topology() as t:
        rec = json.loads(cli.xdpnn("-n", t.dut, "-j", "attach", "d0", "--peer", "d1", "--model",
                                   tmp_path / "m.npz", "--plan", tmp_path / "p.json",
                                   "--cpus", "1", check=True).stdout)
        assert rec["cpus"] == [1]
        pdir = f"/sys/fs/bpf/xdpnn/d0@{t.dut}"
        assert {"nn_cpus", "stage1_prog", "stage1_nn_model"} <= set(os.listdir(pdir))
        one_by_one_through_cpu1(t, pdir, reqs, want)
        s = stats(t)
        assert list(s["classes"].values()) == np.bincount(want, minlength=5).tolist()
        assert s["input"]["classified"] == 2000 and s["verdict"]["redirect"] == 2000
        assert s["stages"]["errors"] == {k: 0 for k in stages.ERRORS}
        cli.xdpnn("-n", t.dut, "detach", "d0", check=True)
        assert not os.path.exists(pdir)


@pytest.mark.netns
@pytest.mark.skipif(len(stages.online_cpus()) < 2, reason="needs 2 CPUs")
def test_deploy_split_plan_on_two_cpus(tmp_path):
    """`plan --split --at NS:d0:d1 --cpus 1`, then `deploy`: the two stages
    (cut inside layer 0) on one interface, the second on CPU 1 by CPUMAP;
    500 requests classified as the reference says; `undeploy` leaves
    nothing."""
    from test_netns import stats, topology, xdp_attached

    m = random_model([128, 256, 16, 5], seed=3)  # layer 0 holds most of the work
    m.save(tmp_path / "m.npz")
    bits, reqs = frames(m, 500, seed=6)
    want = reference.predict(m, bits)
    with topology() as t:
        cli.xdpnn("plan", "--model", tmp_path / "m.npz", "--stages", "2", "--split", "--at",
                  f"{t.dut}:d0:d1", "--cpus", "1", "--out", tmp_path / "p.json", check=True)
        rep = json.loads(cli.xdpnn("-j", "deploy", tmp_path / "p.json", check=True).stdout)
        assert rep["chain"] == "cpumap" and len(rep["stages"]) == 2
        assert rep["stages"][0][:2] == [0, 0] and rep["stages"][0][3] > 0  # inside layer 0
        text = cli.xdpnn("status", check=True).stdout
        assert f"2 stages (CPUMAP, stages 1.. on CPUs 1): {stages.describe(rep['stages'])}" in text
        pdir = f"/sys/fs/bpf/xdpnn/d0@{t.dut}"
        one_by_one_through_cpu1(t, pdir, reqs, want)
        s = stats(t)
        assert s["input"]["classified"] == 500 and s["verdict"]["redirect"] == 500
        assert s["stages"]["errors"] == {k: 0 for k in stages.ERRORS}
        cli.xdpnn("undeploy", tmp_path / "p.json", check=True)
        assert not os.path.exists(pdir) and not xdp_attached(t.dut, "d0")


def test_cpus_refusals(tmp_path):
    """--cpus is checked before anything is built: exit 2, one line naming it."""
    m = random_model(SMALL, seed=2)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 3), tmp_path / "p.json")
    base = ("attach", "nosuch0", "--model", tmp_path / "m.npz")
    cases = {("--cpus", "1"): "runs as one program",
             ("--plan", tmp_path / "p.json", "--cpus", "1"): "give 2 CPU(s)",
             ("--plan", tmp_path / "p.json", "--cpus", "0,4095"): "CPU 4095 is not online",
             ("--plan", tmp_path / "p.json", "--cpus", "1,1"): "each once",
             ("--plan", tmp_path / "p.json", "--cpus", "0,1", "--xdp-mode", "generic"):
                 "needs --xdp-mode native"}
    for extra, msg in cases.items():
        r = cli.xdpnn(*base, *extra, check=False)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.splitlines()) == 1, \
            (extra, r.stderr)
