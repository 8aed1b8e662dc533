"""Commands given a model over one program's verifier budget (one that
attach runs as tail-call stages, docs/partitioning.md "When a model is
staged"): predict and evaluate run it through its stages; model add,
bench and a flow-mode evaluate refuse it up front, with one line and
exit 2, before anything is compiled or created."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cli
from xdpnn.loader import plan
from xdpnn.trainer import reference
from xdpnn.trainer.model import DEFAULT_PORT, random_model
from xdpnn.traffic import packets

LFC = [784, 1024, 1024, 1024, 10]


@pytest.fixture(scope="module")
def lfc_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lfc") / "lfc.npz"
    random_model(LFC, seed=6).save(path)
    return path


def refused(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "tail-call stages" in line and "docs/partitioning.md" in line, line
    for w in words:
        assert w in line, line


@pytest.mark.root
def test_predict_runs_a_staged_model_through_its_stages(lfc_file):
    """predict builds the stages attach would, and the chain's classes are
    the reference's for every frame."""
    model = random_model(LFC, seed=6)
    assert plan.auto_cuts(model)
    bits = np.random.default_rng(2).integers(0, 2, (40, LFC[0]), dtype=np.uint8)
    frames = [packets.request(reference.bytes_from_bits(b), DEFAULT_PORT) for b in bits]
    r = cli.xdpnn("predict", "--model", lfc_file, "--hex", *[f.hex() for f in frames],
                  check=True)
    lines = r.stdout.strip().splitlines()
    want = reference.predict(model, bits)
    rows = lines[1:1 + len(frames)]
    assert [ln.split()[3] for ln in rows] == [model.classes[k] for k in want]
    assert all(ln.split()[-1] == "yes" for ln in rows)
    cuts = plan.auto_cuts(model)
    assert lines[-1].startswith(f"(the model ran as {len(cuts)} tail-call stages")


@pytest.mark.root
def test_evaluate_runs_a_staged_model_through_its_stages(monkeypatch):
    """A small model staged by a lower budget: evaluate's classes, per frame,
    are the reference's through the chain."""
    from xdpnn.loader import evaluate, stages
    model = random_model([64, 48, 40, 36, 5], seed=4)
    _, insns = plan.predicted_layers(model.sizes)
    monkeypatch.setattr(plan, "BUDGET", 0.6 * sum(insns))
    assert len(plan.auto_cuts(model)) >= 2
    built = []
    real = stages.build_unpinned
    monkeypatch.setattr(stages, "build_unpinned",
                        lambda *a, **kw: built.append(1) or real(*a, **kw))
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2, (300, 64), dtype=np.uint8)
    frames = [packets.request(reference.bytes_from_bits(b), DEFAULT_PORT) for b in bits]
    want = reference.predict(model, bits)
    captures = {c: [(i, f) for i, (f, k) in enumerate(zip(frames, want)) if k == j]
                for j, c in enumerate(model.classes)}
    rep = evaluate.evaluate(model, {c: v for c, v in captures.items() if v})
    assert built == [1]
    assert rep["reference_mismatches"] == 0
    assert rep["packets"]["count"] == 300 and rep["packets"]["accuracy"] == 1.0


def test_model_add_refuses_a_staged_model(lfc_file):
    r = cli.xdpnn("model", "add", "lo", "--model", lfc_file, "--id", "1")
    refused(r, "model add:", "784-1024-1024-1024-10", "attach it on an interface of its own")
    assert not os.path.exists("/sys/fs/bpf/xdpnn/lo")


def test_bench_refuses_a_staged_model(lfc_file, tmp_path):
    prefix = f"xdpnn-ss-b{os.getpid() % 10000}"
    r = cli.xdpnn("bench", "--quick", "--model", lfc_file, "--netns-prefix", prefix,
                  "--out", tmp_path / "out")
    refused(r, "bench:", "xdpnn verify")
    r = cli.xdpnn("bench", "--serving", "--quick", "--shape", "784-1024-1024-1024-10",
                  "--out", tmp_path / "out")
    refused(r, "bench --serving:", "attach IFACE --model F --serve")
    assert not (tmp_path / "out").exists()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)] \
        if os.path.isdir("/run/netns") else True


def test_evaluate_refuses_a_staged_flow_model(tmp_path):
    model = random_model([256, 1024, 1024, 1024, 1024, 4], seed=1, mode="flow")
    assert plan.auto_cuts(model)
    model.save(tmp_path / "flow.npz")
    (tmp_path / "pcaps").mkdir()
    packets.write_pcap(str(tmp_path / "pcaps" / "class0.pcap"),
                       [packets.request(b"\0" * 16, DEFAULT_PORT)])
    r = cli.xdpnn("-j", "evaluate", "--model", tmp_path / "flow.npz", "--pcaps",
                  tmp_path / "pcaps")
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout or r.stderr)
    assert "tail-call stages" in json.dumps(err) and "flow-mode" in json.dumps(err)
