"""Stages (docs/partitioning.md): a model cut into tail-call programs of
contiguous layers, bit-exact against the reference at every cut; the
refusals of a stage and their counters; the planner's cuts against brute
force; plan files; attach and detach of a staged model, all or nothing.
"""
from __future__ import annotations

import itertools
import json
import os

import cli
import numpy as np
import pytest
from xdpnn.loader import bpf_sys, compile, layout, maps, plan, stages, testrun
from xdpnn.loader.errors import BuildError, UsageError
from xdpnn.trainer import reference
from xdpnn.trainer.model import DEFAULT_PORT, random_model

SMALL = [64, 48, 40, 36, 33, 5]  # 4 hidden layers: boundaries 1..4
LFC = [784, 1024, 1024, 1024, 10]
WIDEST = [1024, 2048, 2048, 10]


# --- the planner (pure Python) ------------------------------------------------

def brute_force(costs, n, insns=None, budget=None):
    """The smallest max stage cost over every cut into n stages."""
    best = None
    for inner in itertools.combinations(range(1, len(costs)), n - 1):
        bounds = [0, *inner, len(costs)]
        parts = list(zip(bounds, bounds[1:]))
        if budget is not None and any(sum(insns[a:b]) > budget for a, b in parts):
            continue
        worst = max(sum(costs[a:b]) for a, b in parts)
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("costs", [[1, 2, 3, 4, 5], [5, 1, 1, 1, 5], [10, 1, 1, 1, 1],
                                   [3, 3, 3, 3], [1, 100, 1], [7], [2, 9, 4, 4, 8]])
def test_min_max_cut_is_optimal(costs):
    for n in range(1, len(costs) + 1):
        worst, cuts = plan.min_max_cut(costs, n)
        assert worst == brute_force(costs, n)
        assert len(cuts) == n and cuts[0][0] == 0 and cuts[-1][1] == len(costs)
        assert all(a < b for a, b in cuts) and all(p[1] == q[0] for p, q in zip(cuts, cuts[1:]))
        assert max(sum(costs[a:b]) for a, b in cuts) == worst


def test_min_max_cut_random_lists_and_budget():
    rng = np.random.default_rng(3)
    for _ in range(200):
        L = int(rng.integers(1, 6))
        costs = [float(c) for c in rng.integers(1, 50, L)]
        insns = [float(c) for c in rng.integers(1, 50, L)]
        budget = float(rng.integers(30, 120))
        for n in range(1, L + 1):
            want = brute_force(costs, n, insns, budget)
            if want is None:
                with pytest.raises(ValueError):
                    plan.min_max_cut(costs, n, insns, budget)
                continue
            worst, cuts = plan.min_max_cut(costs, n, insns, budget)
            assert worst == want
            assert all(sum(insns[a:b]) <= budget for a, b in cuts)


def test_auto_cuts():
    assert plan.auto_cuts(random_model(SMALL)) is None  # one program is enough
    cuts = plan.auto_cuts(random_model(LFC))
    assert cuts == [stages.Cut(0, 2), stages.Cut(2, 4)]  # whole layers where they fit
    _, insns = plan.predicted_layers(LFC)
    assert all(sum(insns[a:b]) <= plan.BUDGET for a, b, _, _ in cuts)
    # A 2048x2048 layer is over one program's budget alone: cut inside it.
    cuts = plan.auto_cuts(random_model(WIDEST))
    assert cuts == [stages.Cut(0, 1), stages.Cut(1, 1, 0, 1024), stages.Cut(1, 3, 1024, 0)]


def test_split_units_and_cuts():
    """With split, a cut falls between groups of 64 neurons: each group
    costs its share of its layer, and the slowest stage gets faster."""
    sizes = [784, 256, 256, 10]
    ns, insns = plan.predicted_layers(sizes)
    where, u_ns, _ = plan.units(sizes, ns, insns, split=True)
    assert where == [(0, 0), (0, 64), (0, 128), (0, 192), (1, 0), (1, 64), (1, 128), (1, 192),
                     (2, 0)]
    assert sum(u_ns) == pytest.approx(sum(ns))
    whole, _ = plan.cut_units(sizes, ns, insns, 2, split=False)
    best, cuts = plan.cut_units(sizes, ns, insns, 2, split=True)
    assert cuts[0].end == 0 and cuts[0].end_neuron > 0  # inside layer 0, 74 % of the work
    # within a group's cost of half the model, which whole layers are far from
    assert best - sum(ns) / 2 <= max(u_ns) and best < 0.8 * whole
    assert best == pytest.approx(max(
        sum(u_ns[:where.index((0, cuts[0].end_neuron))]),
        sum(u_ns[where.index((0, cuts[0].end_neuron)):])))
    # Layers of at most 64 neurons, a multi-bit first layer and the output
    # layer stay whole.
    assert plan.units([64, 64, 100, 5], [1, 1, 1], [1, 1, 1], True)[0] == [(0, 0), (1, 0),
                                                                             (1, 64), (2, 0)]
    assert plan.units([64, 100, 5], [1, 1], [1, 1], True, multibit=True)[0] == [(0, 0), (1, 0)]


def test_carried_cuts_fit_in_front_of_the_frame(tmp_path):
    """A CPUMAP or hop chain carries the hand-off in the frame's headroom:
    plans for them keep it within stages.ROOM bytes, and a cut over it is
    refused before anything is built (one line, exit 2)."""
    m = random_model(LFC, seed=1)
    free = [stages.Cut(*plan.row_cut(r)) for r in plan.make(m, None, 2, split=True)["stages"]]
    with pytest.raises(UsageError, match=f"room for {stages.ROOM}"):
        stages.check_room(m, free, hop=False)  # the tail-call cut is not one for CPUMAP
    for carry, hop in (("cpumap", False), ("hops", True)):
        p = plan.make(m, None, 2, split=True, carry=carry)
        cuts = [stages.Cut(*plan.row_cut(r)) for r in p["stages"]]
        stages.check_room(m, cuts, hop)
        assert cuts[0].end_neuron and stages.carried(1024, hop, cuts[0].end_neuron + 64) > stages.ROOM
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 2, split=True), tmp_path / "p.json")
    r = cli.xdpnn("attach", "nosuch0", "--model", tmp_path / "m.npz", "--plan",
                  tmp_path / "p.json", "--cpus", "1", check=False)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "room for" in r.stderr


@pytest.mark.parametrize("cuts,why", [
    ([[0, 0, 0, 100], [0, 3, 100, 0]], "multiple of 64"),     # not between groups
    ([[0, 0, 0, 256], [0, 3, 256, 0]], "multiple of 64"),     # past the layer's neurons
    ([[0, 2, 0, 64], [2, 3, 64, 0]], "multiple of 64"),       # inside the output layer
    ([[0, 0, 0, 64], [0, 3, 128, 0]], "contiguously"),        # a gap
    ([[0, 0, 0, 64], [0, 0, 64, 64], [0, 3, 64, 0]], "contiguously"),  # an empty stage
    ([[0, 1, 0], [1, 3]], "contiguously"),                    # three numbers
])
def test_split_cuts_checked(cuts, why):
    with pytest.raises(UsageError, match=why):
        stages.check_cuts([784, 256, 256, 10], cuts, "test")


def test_plan_file_round_trip(tmp_path):
    m = random_model(LFC, seed=1)
    p = plan.make(m, None, 4, mtu=150)
    path = tmp_path / "plan.json"
    plan.save(p, path)
    assert plan.load(path, m) == [stages.Cut(*r["layers"]) for r in p["stages"]]
    assert [r["fits_mtu"] for r in p["stages"]] == [False, False, False, True]
    t = p["throughput_pps"]
    assert t["compute_only"]["pipelined"] == round(1e9 / p["slowest_ns"])
    # the path, hand-offs and the next CPUs' own costs (loader/plan.py rates())
    ns = [r["ns"] for r in p["stages"]]
    assert t["per_cpu_ns"][0] == pytest.approx(plan.PATH_NS + ns[0] + plan.HANDOFF_NS, abs=0.1)
    assert t["per_cpu_ns"][3] == pytest.approx(plan.NEXT_NS + ns[3], abs=0.1)
    assert t["pipelined"] == round(1e9 / max(t["per_cpu_ns"]))
    assert t["one_cpu"] == round(1e9 / (plan.PATH_NS + sum(ns)))
    # a frame between stages: the request, then the stage header and words in front
    assert p["stages"][0]["activation_bytes"] == 14 + 20 + 8 + 98 + 16 + 8 * 16
    with pytest.raises(UsageError, match="made for model 784-1024-1024-1024-10"):
        plan.load(path, random_model(SMALL))
    bad = {**p, "stages": [{"layers": [0, 2]}, {"layers": [3, 4]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UsageError, match="contiguously"):
        plan.load(tmp_path / "bad.json", m)
    (tmp_path / "junk.json").write_text("[1, 2")
    with pytest.raises(UsageError, match="cannot read a plan"):
        plan.load(tmp_path / "junk.json", m)


def test_plan_command(tmp_path):
    m = random_model(SMALL, seed=2)
    m.save(tmp_path / "m.npz")
    r = cli.xdpnn("plan", "--model", tmp_path / "m.npz", "--stages", "3", "--out",
                  tmp_path / "p.json", "-j", check=True)
    p = json.loads(r.stdout)
    assert len(p["stages"]) == 3 and json.loads((tmp_path / "p.json").read_text()) == p
    r = cli.xdpnn("plan", "--model", tmp_path / "m.npz", "--stages", "6", check=False)
    assert r.returncode == 2 and "--stages 6" in r.stderr
    # --split: cuts inside layers, in the plan file and in what plan prints.
    random_model([784, 256, 256, 10], seed=2).save(tmp_path / "w.npz")
    r = cli.xdpnn("plan", "--model", tmp_path / "w.npz", "--stages", "2", "--split", "--out",
                  tmp_path / "s.json", check=True)
    p = plan.read(str(tmp_path / "s.json"))
    first, second = p["stages"]
    assert first["layers"] == [0, 0] and first["neurons"][0] == 0 and p["split"]
    assert second["layers"] == [0, 3] and second["neurons"] == [first["neurons"][1], 0]
    n = first["neurons"][1]
    assert f"stage 0: layer 0[0:{n}]," in r.stdout and f"stage 1: layers 0[{n}:]..2," in r.stdout
    # the frame between them carries layer 0's input and the neurons done
    assert first["activation_bytes"] == 14 + 20 + 8 + 98 + 16 + 8 * 13 + n // 8


def test_digest_names_sizes_and_weights():
    a, b = random_model(SMALL, seed=1), random_model(SMALL, seed=1)
    assert stages.digest(a) == stages.digest(b)
    b.weights[2][0, 0] ^= 1
    assert stages.digest(a) != stages.digest(b)
    b = random_model(SMALL, seed=1)
    b.thresholds[0][3] += 1
    assert stages.digest(a) != stages.digest(b)


# --- stages in the kernel --------------------------------------------------------

# Cuts inside layers (--split) of a model with wide layers: the first stage
# ends inside layer 0; stages that begin inside a layer, end inside one,
# or hold the middle of one; a last group of 8 neurons (192..199).
WIDE = [100, 200, 130, 5]
SPLIT_CUTS = [[(0, 0, 0, 64), (0, 1, 64, 128), (1, 3, 128, 0)],
              [(0, 0, 0, 192), (0, 1, 192, 64), (1, 1, 64, 128), (1, 3, 128, 0)]]


@pytest.mark.root
@pytest.mark.parametrize("methods", ["hv", "vh"])
@pytest.mark.parametrize("cuts", SPLIT_CUTS, ids=["3 stages", "4 stages"])
def test_split_stages_bit_exact(cuts, methods):
    """Stages that split layers between groups of 64 neurons give the
    reference's class, for horizontal and vertical layers."""
    m = random_model(WIDE, seed=7)
    res = testrun.verify(m, 2000, seed=4, methods=methods, cuts=cuts)
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 3 and res["methods"] == methods
    assert [s["layers"] for s in res["stages"]] == [list(c) for c in cuts]


@pytest.mark.root
def test_widest_layers_bit_exact_through_split_stages():
    """1024-2048-2048-10: the 2048x2048 layer is cut in two (plan.auto_cuts)."""
    m = random_model(WIDEST, seed=1)
    res = testrun.verify(m, 2000, seed=2, cuts=plan.auto_cuts(m))
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 5
    assert [s["layers"] for s in res["stages"]] == [[0, 1], [1, 1, 0, 1024], [1, 3, 1024, 0]]
    assert all(s["verified_insns"] < 1_000_000 for s in res["stages"])


EVERY_CUT = [[(0, 5)]] + [[(0, k), (k, 5)] for k in range(1, 5)] + [[(k, k + 1) for k in range(5)]]


@pytest.mark.root
@pytest.mark.parametrize("cuts", EVERY_CUT[1:], ids=lambda c: "|".join(f"{a}-{b}" for a, b in c))
def test_stages_bit_exact_at_every_boundary(cuts):
    m = random_model(SMALL, seed=5)
    res = testrun.verify(m, 2000, seed=1, cuts=cuts)
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 3
    assert [s["layers"] for s in res["stages"]] == [list(c) for c in cuts]


@pytest.mark.root
@pytest.mark.parametrize("signed", [False, True])
def test_multibit_first_layer_in_a_stage(signed):
    """Stage 0 computes a k-bit first layer (bpf/bnn_multibit.h) like one program."""
    m = random_model([48, 32, 24, 5], seed=6, input_bits=8, signed=signed)
    res = testrun.verify(m, 2000, seed=3, cuts=[(0, 1), (1, 3)])
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 3


@pytest.mark.root
def test_lfc_bit_exact_through_stages():
    m = random_model(LFC, seed=1)
    cuts = plan.auto_cuts(m)
    res = testrun.verify(m, 2000, seed=2, cuts=cuts)
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 5
    assert all(s["verified_insns"] < 1_000_000 for s in res["stages"])


def request(model, rng):
    from xdpnn.traffic import packets
    bits = rng.integers(0, 2, model.sizes[0], dtype=np.uint8)
    return bits, packets.request(reference.bytes_from_bits(bits), DEFAULT_PORT)


@pytest.mark.root
def test_refusals_and_counters():
    """Stage 1 run alone on crafted nn_stage entries: another digest,
    another layer, another activation count are dropped and counted; the
    right ones classify.  A stage 0 whose next slot is empty counts it and
    takes the default path."""
    m = random_model([64, 48, 40, 6], seed=7)
    built = stages.build_unpinned(m, [(0, 2), (2, 3)], link=False)
    try:
        act, err = built.maps["nn_stage"], built.maps["nn_stage_err"]
        stage1 = built.stages[1].prog_fd
        d = stages.digest(m)
        rng = np.random.default_rng(0)
        _, frame = request(m, rng)
        h = rng.integers(0, 2, 40, dtype=np.uint8)  # the last hidden layer's activations
        words = layout.pack_rows(h[None, :]).ravel()  # zero padding, as a stage writes it
        want = {k: 0 for k in stages.ERRORS}
        for bad, (dig, layer, bits) in {"bad_digest": (d ^ 1, 2, 40),
                                        "bad_layer": (d, 1, 40),
                                        "bad_bits": (d, 2, 41)}.items():
            stages.write_act(act, 1, dig, layer, bits, words)
            verdict, _, _ = bpf_sys.test_run(stage1, frame)
            assert maps.VERDICTS[verdict] == "drop"
            want[bad] += 1
            assert stages.read_errors(err) == want
        # The right entry: the class the reference gives the last hidden layer.
        stages.write_act(act, 1, d, 2, 40, words)
        before = compile.read_counters(built.maps["nn_counters"])["class_packets"].copy()
        verdict, _, _ = bpf_sys.test_run(stage1, frame)
        got = compile.read_counters(built.maps["nn_counters"])["class_packets"] - before
        a = 40 - 2 * (h[None, :] != m.weights[-1]).sum(axis=1)
        scores = m.out_scale.astype(np.int64) * a + m.out_bias
        assert int(np.argmax(got)) == int(np.argmax(scores)) and got.sum() == 1
        assert stages.read_errors(err) == want
        # Stage 0 with nothing in nn_next: counted, default path (no peer: pass).
        verdict, _, _ = bpf_sys.test_run(built.prog_fd, frame)
        assert maps.VERDICTS[verdict] == "pass"
        assert stages.read_errors(err)["no_next"] == 1
    finally:
        built.close()


@pytest.mark.root
def test_temporary_pins_are_removed():
    # This process's folders only: other runs may attach meanwhile.
    mine = lambda: {n for n in os.listdir("/sys/fs/bpf")  # noqa: E731
                    if n.startswith(f"xdpnn_stages_{os.getpid()}_")}
    stages.build_unpinned(random_model([16, 8, 8, 2]), [(0, 1), (1, 3)]).close()
    assert not mine()


# --- attach and detach --------------------------------------------------------------

@pytest.mark.netns
def test_attach_detach_staged(veth_pair, tmp_path):
    ns = veth_pair
    m = random_model(SMALL, seed=3)
    m.save(tmp_path / "m.npz")
    cli.xdpnn("plan", "--model", tmp_path / "m.npz", "--stages", "3", "--out",
              tmp_path / "p.json", check=True)
    rec = json.loads(cli.xdpnn("-n", ns, "-j", "attach", "xv0", "--model", tmp_path / "m.npz",
                               "--plan", tmp_path / "p.json", check=True).stdout)
    pdir = f"/sys/fs/bpf/xdpnn/xv0@{ns}"
    try:
        assert len(rec["stages"]) == 3
        pins = set(os.listdir(pdir))
        assert {"prog", "nn_next", "nn_stage", "nn_stage_err", "stage1_prog", "stage1_nn_next",
                "stage2_prog", "stage2_nn_model"} <= pins and "stage2_nn_next" not in pins
        s = json.loads(cli.xdpnn("-n", ns, "-j", "stats", "xv0", check=True).stdout)
        assert s["stages"]["errors"] == {k: 0 for k in stages.ERRORS}
        r = cli.xdpnn("-n", ns, "swap", "xv0", "--model", tmp_path / "m.npz", check=False)
        assert r.returncode == 2 and "stages" in r.stderr
        # The chain through the pins: requests to the pinned stage 0 classify.
        fd = bpf_sys.get_pinned(f"{pdir}/prog")
        cfd = bpf_sys.get_pinned(f"{pdir}/nn_counters")
        try:
            rng = np.random.default_rng(1)
            for _ in range(50):
                bits, frame = request(m, rng)
                before = compile.read_counters(cfd)["class_packets"].copy()
                bpf_sys.test_run(fd, frame)
                got = compile.read_counters(cfd)["class_packets"] - before
                assert int(np.argmax(got)) == int(reference.predict(m, bits[None, :])[0])
        finally:
            os.close(fd)
            os.close(cfd)
    finally:
        cli.xdpnn("-n", ns, "detach", "xv0", check=True)
    assert not os.path.exists(pdir)


@pytest.mark.netns
def test_failed_staged_attach_leaves_nothing(veth_pair, tmp_path, monkeypatch):
    from xdpnn.loader import datapath
    ns = veth_pair
    m = random_model(SMALL, seed=3)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 3), tmp_path / "p.json")
    real = compile.build

    def failing(model, *a, what=None, **kw):
        if what and "stage 2" in what:
            raise BuildError("compile: injected failure")
        return real(model, *a, what=what, **kw)
    monkeypatch.setattr(compile, "build", failing)
    with pytest.raises(BuildError, match="injected"):
        datapath.attach("xv0", str(tmp_path / "m.npz"), ns=ns, plan_path=str(tmp_path / "p.json"))
    assert not os.path.exists(f"/sys/fs/bpf/xdpnn/xv0@{ns}")
    with datapath.netns(ns):
        assert bpf_sys.xdp_prog_id(datapath.ifindex("xv0", ns)) == 0


@pytest.mark.netns
def test_real_packets_through_attached_stages(tmp_path):
    """gen -> d0 (five stages, one per layer, forwarding to d1) -> sink: every
    request arrives intact, and the last stage counted the reference's class
    for each."""
    from test_netns import requests, stats, topology
    from xdpnn.traffic.sender import Capture, send_frames

    m = random_model(SMALL, seed=9)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 5), tmp_path / "p.json")
    with topology() as t:
        cli.xdpnn("-n", t.dut, "attach", "d0", "--peer", "d1", "--model", tmp_path / "m.npz",
                  "--plan", tmp_path / "p.json", check=True)
        bits, frames = requests(m, 500, seed=5)
        with Capture(t.sink, "s0") as cap:
            assert send_frames(t.gen, "g0", frames) == 500
            got = cap.collect(500)
        assert got == frames
        s = stats(t)
        want = np.bincount(reference.predict(m, bits), minlength=m.sizes[-1])
        assert list(s["classes"].values()) == want.tolist()
        assert s["input"]["classified"] == 500 and s["verdict"]["redirect"] == 500
        assert s["stages"]["errors"] == {k: 0 for k in stages.ERRORS}
        cli.xdpnn("-n", t.dut, "detach", "d0", check=True)
        assert not os.path.exists(f"/sys/fs/bpf/xdpnn/d0@{t.dut}")
