"""`xdpnn capture` and `xdpnn evaluate` end to end: real servers and clients
in namespaces of the command's own, their frames labeled by service, a model
trained on them, and the kernel's accuracy on them checked against an
independent count through the Python reference."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cli import ROOT, xdpnn
from xdpnn.traffic import capture
from xdpnn.traffic.packets import read_pcap

pytestmark = [pytest.mark.root, pytest.mark.netns]


def namespaces() -> set[str]:
    d = Path("/run/netns")
    return set(os.listdir(d)) if d.is_dir() else set()


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A small capture of every class: two client commands each."""
    out = tmp_path_factory.mktemp("captures")
    prefix = f"fl-{uuid.uuid4().hex[:8]}"
    r = xdpnn("capture", "--out", out, "--seed", 5, "--seconds", 30, "--flows", 2,
              "--prefix", prefix, "-j", check=True)
    return out, prefix, json.loads(r.stdout)


def test_capture_writes_one_labeled_pcap_per_class_and_cleans_up(captured):
    out, prefix, rep = captured
    assert sorted(p.stem for p in out.glob("*.pcap")) == sorted(capture.CLASSES)
    for c in capture.CLASSES:
        frames = read_pcap(str(out / f"{c}.pcap"))
        assert rep["classes"][c]["failed"] == 0, rep["notes"]
        assert len(frames) == rep["classes"][c]["frames"] > 0
        # Every frame is IPv4 from or to the server port of its class, no
        # larger than the MTU allows (offloads off).
        assert {capture.label(f) for f in frames} == {c}
        assert max(len(f) for f in frames) <= 1514
        flows = {capture.flow_key(f) for f in frames}
        assert len(flows) == rep["classes"][c]["flows"] >= 2
    # Both directions were recorded: replies come from the server.
    tls = read_pcap(str(out / "tls.pcap"))
    assert {f[26:30] for f in tls} == {bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])}
    assert not {n for n in namespaces() if n.startswith(prefix)}


@pytest.fixture(scope="module")
def model_file(captured, tmp_path_factory):
    from xdpnn.trainer import data, train
    out, _, _ = captured
    ds = data.load(f"pcaps:{out}")
    m = train.train(ds, train.Config(hidden=[32], epochs=4, patience=4, seed=1))
    path = tmp_path_factory.mktemp("model") / "captured.npz"
    m.save(str(path))
    return path


def test_evaluate_counts_what_the_reference_says_per_packet_and_per_flow(captured, model_file):
    from xdpnn.trainer import features, reference
    from xdpnn.trainer.model import load
    out, _, _ = captured
    r = xdpnn("evaluate", "--model", model_file, "--pcaps", out, "-j", check=True)
    rep = json.loads(r.stdout)
    assert rep["reference_mismatches"] == 0 and not rep["not_run"]
    m = load(str(model_file))
    n = len(m.classes)
    packets, flows = np.zeros((n, n), int), np.zeros((n, n), int)
    for c in capture.CLASSES:
        frames = read_pcap(str(out / f"{c}.pcap"))
        bits = np.stack([features.model_input(f, "headers", m.sizes[0], 0)[1] for f in frames])
        got = reference.predict(m, bits)
        true = m.classes.index(c)
        np.add.at(packets[true], got, 1)
        votes: dict = {}
        for f, g in zip(frames, got):
            votes.setdefault(capture.flow_key(f), []).append(int(g))
        for seq in votes.values():
            counts = Counter(seq)
            top = max(counts.values())
            flows[true, next(g for g in seq if counts[g] == top)] += 1
    assert rep["packets"]["confusion"] == packets.tolist()
    assert rep["flows"]["confusion"] == flows.tolist()
    # Rounded to 4 places by both: they may differ in the last one.
    assert abs(rep["packets"]["accuracy"] - np.trace(packets) / packets.sum()) <= 1e-4
    assert rep["flows"]["count"] == sum(v["flows"] for v in captured[2]["classes"].values())


def test_evaluate_refuses_a_capture_of_a_class_the_model_lacks(captured, model_file, tmp_path):
    out, _, _ = captured
    (tmp_path / "dns.pcap").write_bytes((out / "dns.pcap").read_bytes())
    (tmp_path / "smtp.pcap").write_bytes((out / "dns.pcap").read_bytes())
    r = xdpnn("evaluate", "--model", model_file, "--pcaps", tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "smtp.pcap: 'smtp' is not a class" in r.stderr


def test_capture_refuses_unknown_classes_before_making_anything(tmp_path):
    before = namespaces()
    r = xdpnn("capture", "--out", tmp_path / "x", "--classes", "dns,smtp", "-j")
    assert r.returncode == 2 and "smtp" in json.loads(r.stdout)["error"]
    assert namespaces() == before and not (tmp_path / "x").exists()
    (tmp_path / "f").write_text("")
    r = xdpnn("capture", "--out", tmp_path / "f", "--classes", "dns")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr
    assert namespaces() == before


def test_sigterm_ends_every_server_and_deletes_the_namespaces(tmp_path):
    prefix = f"fl-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", "capture", "--out",
                          tmp_path, "--classes", "http,ssh,other", "--flows", "1000", "--seconds",
                          "60", "--prefix", prefix], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    srv = f"{prefix}-srv"
    pids: set[str] = set()
    deadline = time.monotonic() + 30
    try:
        # Wait until the servers run (three of them, nginx has a worker too).
        while len(pids) < 4 and time.monotonic() < deadline:
            time.sleep(0.3)
            r = subprocess.run(["ip", "netns", "pids", srv], capture_output=True, text=True)
            pids = set(r.stdout.split())
        assert len(pids) >= 4, "the servers never started"
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "interrupted" in err
    assert not {n for n in namespaces() if n.startswith(prefix)}
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
