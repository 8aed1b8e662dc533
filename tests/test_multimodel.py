"""Several models on one serving interface (`xdpnn model add/remove/list`,
`swap --id`): requests from a UDP socket in one namespace, answered by XDP_TX
on a veth end in another (the set-up of test_serve_netns.py), each by the
model its model id names, each reply equal to that model's reference.

One datapath for the module: model 0 is 256-32-16-4 (the attached program),
model 1 is 784-64-32-10 (an added program of its own, reached by tail call).
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

import cli  # noqa: E402
from test_serve_netns import ADDRS, client_server  # noqa: E402
from xdpnn import client  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402

SERVER = ADDRS["s0"][0]
SHAPES = {0: [256, 32, 16, 4], 1: [784, 64, 32, 10]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The pair, model 0 attached with --serve and model 1 added; the models'
    files under "files" (1b: another model of model 1's shape)."""
    d = tmp_path_factory.mktemp("multimodel")
    models = {"0": random_model(SHAPES[0], seed=10), "1": random_model(SHAPES[1], seed=11),
              "1b": random_model(SHAPES[1], seed=12), "2": random_model([100, 16, 3], seed=13),
              "headers": random_model([64, 8, 2], seed=14, mode="headers")}
    files = {k: d / f"m{k}.npz" for k in models}
    for k, m in models.items():
        m.save(files[k])
    with client_server("mm") as (cns, sns):
        xdpnn(sns, "attach", "s0", "--model", files["0"], "--serve")
        xdpnn(sns, "model", "add", "s0", "--model", files["1"], "--id", "1")
        yield {"client": cns, "server": sns, "models": models, "files": files}


def xdpnn(ns, *args, check=True):
    return cli.xdpnn("-n", ns, *args, check=check)


def xdpnn_json(ns, *args):
    return json.loads(xdpnn(ns, "-j", *args).stdout)


def inputs_for(model, n, seed):
    bits = np.random.default_rng(seed).integers(0, 2, (n, model.sizes[0]), dtype=np.uint8)
    return bits, [reference.bytes_from_bits(b) for b in bits]


def ask(served, model_id, inputs, server=SERVER, port=client.DEFAULT_PORT, **kw):
    with client.Client(server, port, netns=served["client"], model=model_id,
                       timeout=2.0) as c:
        rep = c.run(inputs, inflight=16, max_seconds=60, scores=True, keep=True, **kw)
    assert rep["lost"] == 0, rep
    return rep["replies"]


def assert_answers(served, model_id, model, n=200, seed=0):
    """n requests to model_id, each answered with model's class and scores."""
    bits, inputs = inputs_for(model, n, seed)
    got = ask(served, model_id, inputs)
    want = reference.scores(model, bits)
    assert [r.status for r in got] == ["ok"] * n
    assert [r.cls for r in got] == np.argmax(want, axis=1).tolist()
    assert [r.scores for r in got] == want.tolist()


def state(served) -> dict:
    """What a failed command must leave as it was: the pins, the record and
    what is in force for every model (status), and the models served."""
    pdir = f"/sys/fs/bpf/xdpnn/s0@{served['server']}"
    st = [r for r in json.loads(cli.xdpnn("-j", "status", check=True).stdout)
          if r.get("netns") == served["server"]]
    for r in st:
        r.pop("state")
    rows = xdpnn_json(served["server"], "model", "list", "s0")
    for r in rows:  # counters move with the checks' traffic
        for k in ("requests", "replies", "errors"):
            r.pop(k)
    return {"pins": sorted(os.listdir(pdir)), "status": st, "models": rows}


def test_two_models_of_different_shapes_answer_like_their_references(served):
    n = 2500
    before = xdpnn_json(served["server"], "model", "list", "s0")
    for model_id in (0, 1):
        model = served["models"][str(model_id)]
        bits, inputs = inputs_for(model, n, seed=model_id)
        want = reference.scores(model, bits)
        for server in ADDRS["s0"]:  # IPv4 and IPv6
            got = ask(served, model_id, inputs, server=server)
            assert [r.status for r in got] == ["ok"] * n
            assert [r.model for r in got] == [model_id] * n
            assert [r.cls for r in got] == np.argmax(want, axis=1).tolist()
            assert [r.scores for r in got] == want.tolist()
    rows = xdpnn_json(served["server"], "model", "list", "s0")
    assert [(r["id"], r["shape"]) for r in rows] == [(0, "256-32-16-4"), (1, "784-64-32-10")]
    for r, b in zip(rows, before):
        assert (r["requests"] - b["requests"], r["replies"] - b["replies"], r["errors"]) == \
            (2 * n, 2 * n, 0)
    s = xdpnn_json(served["server"], "stats", "s0")
    assert s["serve"]["model 1"]["status"]["ok"] == s["serve"]["model 1"]["requests"]
    # Model 1's program counts its classes; the attached program never saw them.
    assert sum(s["models"]["1"]["classes"].values()) == rows[1]["requests"]
    assert sum(s["classes"].values()) == rows[0]["requests"]


def test_the_port_is_every_models(served):
    """nn_config is shared: `set --port` moves model 1's requests too."""
    sns, models = served["server"], served["models"]
    xdpnn(sns, "set", "s0", "--port", "9696")
    try:
        for model_id in (0, 1):
            bits, inputs = inputs_for(models[str(model_id)], 50, seed=40 + model_id)
            got = ask(served, model_id, inputs, port=9696)
            assert [r.cls for r in got] == reference.predict(models[str(model_id)],
                                                             bits).tolist()
    finally:
        xdpnn(sns, "set", "s0", "--port", str(client.DEFAULT_PORT))
    assert_answers(served, 1, models["1"], n=50, seed=42)


def test_a_removed_model_gets_unknown_model_while_the_others_answer(served):
    sns, files, models = served["server"], served["files"], served["models"]
    out = xdpnn(sns, "model", "add", "s0", "--model", files["2"], "--id", "2").stdout
    assert out.startswith("s0: model 2 is 100-16-3 ")
    assert_answers(served, 2, models["2"], seed=2)
    pdir = f"/sys/fs/bpf/xdpnn/s0@{sns}"
    assert {"model2_prog", "model2_nn_model", "model2_nn_counters"} <= set(os.listdir(pdir))

    removed = xdpnn_json(sns, "model", "remove", "s0", "--id", "2")
    assert (removed["id"], removed["shape"]) == (2, "100-16-3")
    assert not [p for p in os.listdir(pdir) if p.startswith("model2_")]
    _, inputs = inputs_for(models["2"], 300, seed=3)
    got = ask(served, 2, inputs)
    assert {r.status for r in got} == {"unknown_model"} and {r.cls for r in got} == {None}
    assert_answers(served, 0, models["0"], seed=4)
    assert_answers(served, 1, models["1"], seed=5)
    assert [r["id"] for r in xdpnn_json(sns, "model", "list", "s0")] == [0, 1]
    assert xdpnn_json(sns, "stats", "s0")["serve"]["model 2"]["status"]["unknown_model"] == 300


def test_one_model_swapped_100_times_under_load_the_other_never_changes(served):
    """Clients ask both models without pause while model 1 is swapped between
    two models of its shape, then while model 2 is added and removed: every
    model 0 reply is model 0's, every model 1 reply is one of its two
    models' (and both are seen), no request is lost."""
    from xdpnn.loader import datapath, multimodel
    models, files, sns = served["models"], served["files"], served["server"]
    n = 256
    asked = {k: inputs_for(models[k], n, seed=20 + int(k)) for k in ("0", "1")}
    want = {k: reference.scores(models[k], asked[k[0]][0]).tolist() for k in ("0", "1", "1b")}
    stop = threading.Event()
    replies = {0: [], 1: []}
    failed = []

    def load(model_id):
        try:
            with client.Client(SERVER, netns=served["client"], model=model_id, timeout=2.0) as c:
                while not stop.is_set():
                    rep = c.run(asked[str(model_id)][1], inflight=8, max_seconds=10,
                                scores=True, keep=True)
                    replies[model_id].append(rep["replies"])
        except BaseException as e:  # the test thread reports it
            failed.append(e)
    threads = [threading.Thread(target=load, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            datapath.swap("s0", sns, str(files["1b" if i % 2 == 0 else "1"]), model_id=1)
            stop.wait(0.01)
        multimodel.add("s0", sns, str(files["2"]), 2)
        multimodel.remove("s0", sns, 2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failed, failed
    assert len(replies[0]) >= 2 and len(replies[1]) >= 2
    seen = set()
    for model_id, runs in replies.items():
        for run in runs:
            assert None not in run  # no request lost
            for j, r in enumerate(run):
                assert r.status == "ok"
                if model_id == 0:
                    assert r.scores == want["0"][j]
                else:
                    which = [k for k in ("1", "1b") if r.scores == want[k][j]]
                    assert which, f"model 1 reply {j} is neither model's"
                    seen.update(which if want["1"][j] != want["1b"][j] else [])
    assert seen == {"1", "1b"}
    # After an even number of swaps model 1 is its first model again.
    assert xdpnn_json(sns, "model", "list", "s0")[1]["path"] == str(files["1"])
    assert_answers(served, 1, models["1"], seed=6)


def test_failed_commands_change_nothing(served, tmp_path):
    sns, files = served["server"], served["files"]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    before = state(served)
    cases = [  # (args, exit code, message)
        (["model", "add", "s0", "--model", bad, "--id", "3"], 3, "load model"),
        (["model", "add", "s0", "--model", files["2"], "--id", "1"], 7,
         "model id 1 is in use"),
        (["model", "add", "s0", "--model", files["2"], "--id", "0"], 2,
         "model 0 is the attached model"),
        (["model", "add", "s0", "--model", files["2"], "--id", "16"], 2, "expected 1..15"),
        (["model", "add", "s0", "--model", files["2"], "--id", "x"], 2, "expected an integer"),
        (["model", "add", "s0", "--model", files["headers"], "--id", "3"], 2, "payload input"),
        (["model", "add", "s9", "--model", files["2"], "--id", "3"], 7, "not attached"),
        (["model", "remove", "s0", "--id", "3"], 7, "no model 3"),
        (["model", "remove", "s0", "--id", "0"], 2, "model 0 is the attached model"),
        (["swap", "s0", "--model", files["2"], "--id", "1"], 2, "model 1 is 784-64-32-10"),
        (["swap", "s0", "--model", files["1"], "--id", "4"], 7, "no model 4"),
    ]
    for args, code, message in cases:
        r = xdpnn(sns, *args, check=False)
        assert (r.returncode, r.stdout) == (code, ""), (args, r.stderr)
        assert r.stderr.count("\n") == 1 and message in r.stderr, (args, r.stderr)
        assert state(served) == before, args
    # A build that fails (here the compiler finds no kernel headers) after
    # every check passed: the program is never pinned nor put in a slot.
    env = dict(os.environ, BCC_KERNEL_SOURCE="/nonexistent")
    r = cli_with_env(env, "-n", sns, "model", "add", "s0", "--model", files["2"], "--id", "3")
    assert r.returncode == 4 and "compile xdpnn.c for model 100-16-3 (id 3)" in r.stderr, r.stderr
    assert state(served) == before
    assert_answers(served, 0, served["models"]["0"], n=100, seed=7)
    assert_answers(served, 1, served["models"]["1"], n=100, seed=8)
    _, inputs = inputs_for(served["models"]["2"], 20, seed=9)
    assert {r.status for r in ask(served, 3, inputs)} == {"unknown_model"}


def cli_with_env(env, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "xdpnn.loader.cli", *map(str, args)],
                          cwd=cli.ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_detach_removes_every_model(served):
    from xdpnn.loader import bpf_sys
    sns = served["server"]
    rows = xdpnn_json(sns, "model", "list", "s0")
    assert len(rows) == 2
    xdpnn(sns, "detach", "s0")
    assert not os.path.exists(f"/sys/fs/bpf/xdpnn/s0@{sns}")
    # Nothing holds the programs any more: the kernel frees them (after an
    # RCU grace period), the added model's with the attached one's array.
    import time
    deadline = time.monotonic() + 10
    for r in rows:
        while True:
            try:
                os.close(bpf_sys.prog_fd_by_id(r["prog_id"]))
            except bpf_sys.BpfError:
                break
            assert time.monotonic() < deadline, f"program {r['prog_id']} is still loaded"
            time.sleep(0.05)
    # Attached without --serve, it has no model ids: added models need a port.
    xdpnn(sns, "attach", "s0", "--model", served["files"]["0"])
    r = xdpnn(sns, "model", "add", "s0", "--model", served["files"]["2"], "--id", "1",
              check=False)
    assert r.returncode == 2 and "s0: not serving" in r.stderr and "--port" in r.stderr
    assert sorted(os.listdir(f"/sys/fs/bpf/xdpnn/s0@{sns}")) == sorted(
        ("prog", "link", "nn_model", "nn_config", "nn_counters", "nn_tx_port", "nn_meta",
         "nn_serve", "nn_progs", "nn_port_models"))
    xdpnn(sns, "detach", "s0")
    # Attached again with --serve, the interface serves model 0 alone.
    xdpnn(sns, "attach", "s0", "--model", served["files"]["0"], "--serve")
    _, inputs = inputs_for(served["models"]["1"], 20, seed=1)
    assert {r.status for r in ask(served, 1, inputs)} == {"unknown_model"}
