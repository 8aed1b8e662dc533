"""Tier 3, user-space serving: the C and Python servers of traffic/userserve.py
answer requests through veth with the reference's classes and scores, and
every malformed request with the reply payload XDP sends (byte for byte),
or with none where XDP drops it.

    client [c0] 198.18.0.1, 2001:2::1  <->  [s0] 198.18.0.2, 2001:2::2 server
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

import cli  # noqa: E402
from xdpnn import client  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402
from xdpnn.traffic import packets  # noqa: E402
from xdpnn.traffic.topology import SERVER_ADDRS, ClientServer  # noqa: E402
from xdpnn.traffic.userserve import UserServer  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    with ClientServer(f"us-{os.getpid()}-{uuid.uuid4().hex[:6]}") as t:
        yield t


@pytest.mark.parametrize("impl,sizes,n", [("c", [256, 32, 16, 4], 5000),
                                          ("c", [784, 64, 32, 10], 5000),
                                          ("python", [200, 16, 3], 2000)],
                         ids=["c-256-32-16-4", "c-784-64-32-10", "python-200-16-3"])
def test_replies_equal_the_reference_over_ipv4_and_ipv6(pair, impl, sizes, n):
    model = random_model(sizes, seed=11)
    bits = np.random.default_rng(11).integers(0, 2, (n, sizes[0]), dtype=np.uint8)
    inputs = [reference.bytes_from_bits(b) for b in bits]
    want = reference.scores(model, bits)
    with UserServer(model, impl=impl, netns=pair.server, cpu=0) as srv:
        for server in SERVER_ADDRS:
            with client.Client(server, netns=pair.client, timeout=2.0) as c:
                rep = c.run(inputs, inflight=16, max_seconds=60, scores=True, keep=True)
            assert (rep["sent"], rep["received"], rep["lost"]) == (n, n, 0), rep
            got = rep["replies"]
            assert [r.cls for r in got] == np.argmax(want, axis=1).tolist()
            assert [r.scores for r in got] == want.tolist()
    assert srv.counters["requests"] == srv.counters["replies"] == 2 * n
    assert srv.counters["status"]["ok"] == 2 * n


def replies_to_cases(pair, cases) -> list[list[bytes]]:
    """The UDP payloads that come back to each case, over IPv4 then IPv6."""
    got = []
    for server in SERVER_ADDRS:
        with client.Client(server, netns=pair.client, timeout=0.3) as c:
            for _, payload, status in cases:
                c.sock.send(payload)
                wait = c.timeout if status in ("short_header", "not_request") else 2.0
                replies = []
                if client.select.select([c.sock], [], [], wait)[0]:
                    replies.append(c.sock.recv(65535))
                got.append(replies)
    return got


def exported_serve_metrics(pair) -> list[tuple[str, dict, float]]:
    """(sample name, labels, value) of the exporter's xdpnn_serve_* metrics
    for s0, collected as a scrape collects them."""
    from xdpnn.loader.exporter import Collector
    return [(s.name, s.labels, s.value) for fam in Collector([("s0", pair.server)]).collect()
            if fam.name.startswith("xdpnn_serve_") for s in fam.samples]


def test_error_replies_equal_xdps_byte_for_byte(pair, tmp_path):
    model = random_model([100, 16, 4], seed=2)
    cases = packets.serve_cases(13)
    path = tmp_path / "model.npz"
    model.save(path)
    cli.xdpnn("-n", pair.server, "attach", "s0", "--model", path, "--serve", check=True)
    try:
        xdp = replies_to_cases(pair, cases)
        metrics = exported_serve_metrics(pair)
    finally:
        cli.xdpnn("-n", pair.server, "detach", "s0", check=True)
    dropped = [not r for r in xdp]
    assert dropped == [s in ("short_header", "not_request") for _, _, s in cases] * 2
    want = {k: 0 for k in client.SERVE_STATUS}
    for _, _, status in cases:
        want[status] += 2
    # The exporter's serving metrics: every nn_serve entry that counted.
    exported, requests = {}, {}
    for name, labels, v in metrics:
        assert (labels["iface"], labels["netns"]) == ("s0", pair.server)
        if name == "xdpnn_serve_status_requests_total":
            exported[labels["status"]] = exported.get(labels["status"], 0) + v
        elif name == "xdpnn_serve_requests_total":
            requests[labels["model"]] = v
    assert exported == want
    # Model 0: 5 ok and 4 short_input cases; "other": the 7 cases whose model
    # id is not read, and ids 16 and 65535; each over IPv4 and IPv6.
    assert requests == {"0": 2 * 9, "1": 2, "other": 2 * 9}
    for impl in ("c", "python"):
        with UserServer(model, impl=impl, netns=pair.server) as srv:
            user = replies_to_cases(pair, cases)
        for (what, _, _), x, u in zip(cases * 2, xdp, user):
            assert u == x, f"{impl}: {what}"
        assert srv.counters["status"] == want


def test_serve_userspace_command_answers_query(pair, tmp_path):
    model = random_model([256, 32, 16, 4], seed=5)
    path = tmp_path / "model.npz"
    model.save(path)
    server = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", "-n", pair.server,
                               "-j", "serve-userspace", "--model", str(path), "--port", "9696",
                               "--max-seconds", "30"], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # until the server listens: a query that gets a reply
            rep = json.loads(cli.xdpnn("-n", pair.client, "-j", "query", SERVER_ADDRS[0],
                                       "--port", "9696", "--count", "1", "--timeout", "0.2"
                                       ).stdout)
            if rep.get("received"):
                break
        rep = json.loads(cli.xdpnn("-n", pair.client, "-j", "query", SERVER_ADDRS[1], "--port",
                                   "9696", "--count", "3000", "--inflight", "8", check=True
                                   ).stdout)
    finally:
        server.terminate()
        summary, _ = server.communicate(timeout=20)
    assert rep["received"] == 3000 and rep["status"] == {"ok": 3000}
    summary = json.loads(summary)
    assert summary["impl"] == "c" and summary["status"]["ok"] == summary["replies"] >= 3001


@pytest.mark.parametrize("args,code,message", [
    (["--model", "missing.npz"], 3, "load model missing.npz"),
    (["--cpu", "4095"], 2, "--cpu 4095"),
    (["--impl", "rust"], 2, "--impl"),
    (["--port", "0"], 2, "--port 0"),
    ([], 5, "network namespace us-no-such-ns not found"),
])
def test_serve_userspace_bad_input(args, code, message, tmp_path):
    path = tmp_path / "model.npz"
    random_model([64, 8, 2], seed=1).save(path)
    full = args if "--model" in args else ["--model", str(path), *args]
    r = cli.xdpnn("-n", "us-no-such-ns", "serve-userspace", *full)
    assert r.returncode == code and message in r.stderr and r.stderr.count("\n") == 1, r


def test_query_data_scores_the_replies_against_the_labels(pair):
    from xdpnn.traffic.demo import DEFAULT_MODEL
    from xdpnn.trainer.model import load
    from xdpnn.trainer.train import labeled_test_set
    model = load(DEFAULT_MODEL)
    test = labeled_test_set(model)
    correct = int((reference.predict(model, test.bits) == test.labels).sum())
    with UserServer(model, impl="c", netns=pair.server):
        rep = json.loads(cli.xdpnn("-n", pair.client, "-j", "query", SERVER_ADDRS[0], "--data",
                                   f"model:{DEFAULT_MODEL}", "--inflight", "8",
                                   check=True).stdout)
        digits = json.loads(cli.xdpnn("-n", pair.client, "-j", "query", SERVER_ADDRS[1],
                                      "--data", "digits", "--count", "100", check=True).stdout)
    n = len(test.labels)
    assert rep["accuracy"] == {"answered": n, "correct": correct, "unanswered": 0,
                               "accuracy": round(correct / n, 4)}
    assert digits["sent"] == 100 and digits["accuracy"]["answered"] == 100
    r = cli.xdpnn("-n", pair.client, "query", SERVER_ADDRS[0], "--data", "traffic")
    assert r.returncode == 2 and "headers-mode source" in r.stderr


# Awkward shapes for the C server's compile-time sizes: inputs not a multiple
# of 8 or 64, one hidden neuron, 4 hidden layers, 64 classes, rows of one word.
@pytest.mark.parametrize("sizes", [[100, 3, 70, 5], [65, 1, 64], [1024, 512, 1, 64],
                                   [130, 200, 129, 100, 63, 64], [8, 2, 2]])
def test_c_server_equals_the_reference_on_awkward_shapes(pair, sizes):
    model = random_model(sizes, seed=4)
    n = 1500
    bits = np.random.default_rng(4).integers(0, 2, (n, sizes[0]), dtype=np.uint8)
    # Bits past the inputs in the last byte are set: the server must ignore them.
    inputs = [bytes(reference.bytes_from_bits(np.append(b, np.ones(-len(b) % 8, np.uint8))))
              for b in bits]
    want = reference.scores(model, bits)
    with UserServer(model, impl="c", netns=pair.server):
        with client.Client(SERVER_ADDRS[0], netns=pair.client, timeout=2.0) as c:
            rep = c.run(inputs, inflight=16, max_seconds=60, scores=True, keep=True)
    assert rep["received"] == n, rep
    assert [r.scores for r in rep["replies"]] == want.tolist()
    assert [r.cls for r in rep["replies"]] == np.argmax(want, axis=1).tolist()
