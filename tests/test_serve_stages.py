"""Serving a staged model (attach --serve with tail-call stages,
docs/partitioning.md): stage 0 parses the request, the last stage replies.

Test runs hold each output frame byte for byte against the Python twin
(trainer/serve.py), malformed requests included, at several cuts; an
LFC-shape model, cut automatically, answers thousands of requests through
veth with the reference's class and scores, and its documented error
replies.  --cpus with --serve is refused before anything is built."""
from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

import cli
from test_serve import PORT, check_counters, frames, run_and_compare
from xdpnn import client
from xdpnn.bpf.shared import SERVE_STATUS
from xdpnn.loader import compile, plan, stages
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model
from xdpnn.traffic import packets

SMALL = [256, 48, 40, 36, 4]  # 3 hidden layers: boundaries 1..3
LFC = [784, 1024, 1024, 1024, 10]


@pytest.mark.root
@pytest.mark.parametrize("cuts", [[(0, 1), (1, 4)], [(0, 3), (3, 4)], [(0, 1), (1, 2), (2, 3),
                                                                       (3, 4)]],
                         ids=["1|3", "3|1", "1|1|1|1"])
def test_staged_reply_equals_twin(cuts):
    """Every frame out of the chain (replies, error replies, drops, frames
    that are not requests) equals the twin's, and the shared counters count
    each once: input results in stage 0, serving status in the stage that
    answered."""
    model = random_model(SMALL, seed=11)
    built = stages.build_unpinned(model, cuts, serve=True)
    try:
        compile.write_config(built.maps["nn_config"], compile.maps.Config(udp_port=PORT))
        fs = frames(np.random.default_rng(len(cuts)), model, 1000)
        bad, outcomes = run_and_compare(built, model, fs)
        assert not bad, f"{len(bad)} of {len(fs)} frames differ:\n" + "\n".join(bad[:5])
        statuses = collections.Counter(o.status for o in outcomes)
        assert set(statuses) == {None, *SERVE_STATUS} - {"no_room"}

        check_counters(built.maps, outcomes, SMALL[-1])
        assert stages.read_errors(built.maps["nn_stage_err"]) == {k: 0 for k in stages.ERRORS}
    finally:
        built.close()


def test_serve_with_cpus_is_refused_before_building(tmp_path):
    """CPUMAP stages cannot reply (XDP_TX): refused with exit 2, nothing built."""
    m = random_model([64, 48, 40, 6], seed=1)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 2), tmp_path / "p.json")
    r = cli.xdpnn("attach", "lo", "--model", tmp_path / "m.npz", "--plan", tmp_path / "p.json",
                  "--serve", "--cpus", "0", check=False)
    assert r.returncode == 2, r.stderr
    assert "--cpus with --serve" in r.stderr and "XDP_TX" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- an LFC-shape model through veth -------------------------------------------

@pytest.fixture(scope="module")
def lfc_served(tmp_path_factory):
    """The LFC shape served from s0 as its automatic stages; the client's
    namespace and the model."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from test_serve_netns import client_server
    model = random_model(LFC, seed=4)
    path = tmp_path_factory.mktemp("lfc") / "lfc.npz"
    model.save(path)
    with client_server("xdpnn-ss-sv") as (cns, sns):
        rec = json.loads(cli.xdpnn("-n", sns, "-j", "attach", "s0", "--model", path, "--serve",
                                   check=True).stdout)
        assert rec["serve"] and len(rec["stages"]) == len(plan.auto_cuts(model)) > 1
        yield cns, sns, model


def serve_stats(sns) -> dict:
    return json.loads(cli.xdpnn("-n", sns, "-j", "stats", "s0", check=True).stdout)


@pytest.mark.netns
def test_lfc_stages_replies_equal_the_reference(lfc_served):
    from test_serve_netns import ADDRS
    cns, sns, model = lfc_served
    before = serve_stats(sns)["serve"]["model 0"]
    n = 3000
    bits = np.random.default_rng(8).integers(0, 2, (n, LFC[0]), dtype=np.uint8)
    inputs = [reference.bytes_from_bits(b) for b in bits]
    want = reference.scores(model, bits)
    for family, server in enumerate(ADDRS["s0"]):
        with client.Client(server, netns=cns, timeout=2.0) as c:
            rep = c.run(inputs, inflight=8, max_seconds=120, scores=bool(family), keep=True)
        assert (rep["sent"], rep["received"], rep["lost"]) == (n, n, 0), rep
        got = rep["replies"]
        assert [r.status for r in got] == ["ok"] * n
        assert [r.cls for r in got] == np.argmax(want, axis=1).tolist()
        assert [r.scores for r in got] == (want.tolist() if family else [None] * n)
    s = serve_stats(sns)
    after = s["serve"]["model 0"]
    assert after["requests"] - before["requests"] == 2 * n
    assert after["status"]["ok"] - before["status"]["ok"] == 2 * n
    assert s["stages"]["errors"] == {k: 0 for k in stages.ERRORS}


@pytest.mark.netns
def test_lfc_stages_malformed_requests(lfc_served):
    """Each malformed request gets its documented error reply from stage 0
    (or is dropped and counted), as a one-program server does."""
    from test_serve_netns import ADDRS, ask_each
    cns, sns, model = lfc_served
    before = serve_stats(sns)
    cases = packets.serve_cases((LFC[0] + 7) // 8)
    with client.Client(ADDRS["s0"][0], netns=cns, timeout=0.5) as c:
        for what, payload, reply in ask_each(c, cases):
            bits = np.unpackbits(np.frombuffer(payload[16:16 + 98], np.uint8))[None, :]
            assert reply.cls == int(reference.predict(model, bits)[0]), what
    after = serve_stats(sns)
    want = collections.Counter(status for _, _, status in cases)
    moved = {k: sum(e["status"][k] for e in after["serve"].values())
             - sum(e["status"][k] for e in before["serve"].values()) for k in SERVE_STATUS}
    assert moved == {k: want[k] for k in SERVE_STATUS}
    assert after["stages"]["errors"] == {k: 0 for k in stages.ERRORS}


@pytest.mark.netns
def test_added_model_beside_a_staged_model(lfc_served, tmp_path):
    """A one-program model added as id 1 beside the staged model 0 answers
    its requests; model 0's stages keep answering theirs."""
    from test_serve_netns import ADDRS
    cns, sns, model = lfc_served
    small = random_model([100, 16, 3], seed=12)
    small.save(tmp_path / "small.npz")
    cli.xdpnn("-n", sns, "model", "add", "s0", "--model", tmp_path / "small.npz", "--id", "1",
              check=True)
    try:
        rng = np.random.default_rng(12)
        for m, mid in ((small, 1), (model, 0)):
            bits = rng.integers(0, 2, (300, m.sizes[0]), dtype=np.uint8)
            with client.Client(ADDRS["s0"][0], model=mid, netns=cns, timeout=2.0) as c:
                rep = c.run([reference.bytes_from_bits(b) for b in bits], inflight=8,
                            max_seconds=60, scores=True, keep=True)
            want = reference.scores(m, bits)
            assert [(r.status, r.model) for r in rep["replies"]] == [("ok", mid)] * 300
            assert [r.scores for r in rep["replies"]] == want.tolist()
    finally:
        cli.xdpnn("-n", sns, "model", "remove", "s0", "--id", "1", check=True)


@pytest.mark.netns
def test_userspace_c_server_serves_the_lfc_shape(lfc_served):
    """User space has no verifier budget: serve-userspace's C server answers
    the same model as it is (on another port of the same namespace, which
    the XDP server passes to the stack)."""
    from test_serve_netns import ADDRS
    from xdpnn.traffic.userserve import UserServer
    cns, sns, model = lfc_served
    n = 1000
    bits = np.random.default_rng(13).integers(0, 2, (n, LFC[0]), dtype=np.uint8)
    want = reference.scores(model, bits)
    with UserServer(model, port=PORT + 101, impl="c", netns=sns) as srv:
        with client.Client(ADDRS["s0"][0], port=PORT + 101, netns=cns, timeout=2.0) as c:
            rep = c.run([reference.bytes_from_bits(b) for b in bits], inflight=8,
                        max_seconds=60, scores=True, keep=True)
    assert (rep["sent"], rep["received"], rep["lost"]) == (n, n, 0), rep
    assert [r.scores for r in rep["replies"]] == want.tolist()
    assert srv.counters["status"]["ok"] == n
