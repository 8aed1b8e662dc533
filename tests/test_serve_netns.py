"""Tier 3, serving: requests from a UDP socket in one namespace, answered by
XDP_TX on a veth end in another, received by the socket, so the client's
stack checks every checksum.

    client [c0] 198.18.1.1, 2001:2:0:1::1  <->  [s0] 198.18.1.2, 2001:2:0:1::2 server
                (a counting XDP program)           (xdpnn attach --serve)
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager

import numpy as np
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

import cli  # noqa: E402
from xdpnn import client  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402
from xdpnn.traffic import packets  # noqa: E402

PORT = 9595
ADDRS = {"c0": ("198.18.1.1", "2001:2:0:1::1"), "s0": ("198.18.1.2", "2001:2:0:1::2")}


@contextmanager
def client_server(prefix: str = "xsv"):
    """Two namespaces joined by c0 <-> s0, addresses and static neighbours,
    no routes beyond the link's own; deleted on exit."""
    import pyroute2.netns
    from pyroute2 import IPRoute

    from xdpnn.loader.netns import netns
    from xdpnn.traffic.sink import Sink
    tag = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    names = {"c0": f"{tag}-c", "s0": f"{tag}-s"}
    made = []
    try:
        for ns in names.values():
            pyroute2.netns.create(ns)
            made.append(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname="c0", kind="veth", net_ns_fd=names["c0"],
                     peer={"ifname": "s0", "net_ns_fd": names["s0"]})
        macs = {}
        for dev, ns in names.items():
            with netns(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                ipr.link("set", index=idx, state="up")
                macs[dev] = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
                v4, v6 = ADDRS[dev]
                ipr.addr("add", index=idx, address=v4, prefixlen=24)
                ipr.addr("add", index=idx, address=v6, prefixlen=64, flags=0x02)  # nodad
        for dev, ns in names.items():
            other = "s0" if dev == "c0" else "c0"
            with netns(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                for addr in ADDRS[other]:
                    ipr.neigh("add", dst=addr, lladdr=macs[other], ifindex=idx, state=0x80)
        # XDP_TX on s0 delivers to c0 only if c0 runs NAPI, which an XDP
        # program turns on (docs/datapath.md, "Forwarding, veth, and namespaces").
        with Sink(names["c0"], "c0"):
            yield names["c0"], names["s0"]
    finally:
        if len(made) == 2:
            cli.xdpnn("-n", names["s0"], "detach", "s0")
        for ns in made:
            pyroute2.netns.remove(ns)


@pytest.fixture(scope="module")
def pair():
    with client_server() as p:
        yield p


@contextmanager
def served(pair, model, tmp_path):
    path = tmp_path / f"model-{model.shape}.npz"
    model.save(path)
    cli.xdpnn("-n", pair[1], "attach", "s0", "--model", path, "--serve", check=True)
    try:
        yield
    finally:
        cli.xdpnn("-n", pair[1], "detach", "s0", check=True)


def serve_stats(pair) -> dict:
    return json.loads(cli.xdpnn("-n", pair[1], "-j", "stats", "s0", check=True).stdout)


MODELS = [[256, 32, 16, 4], [784, 64, 32, 10]]


@pytest.mark.parametrize("sizes", MODELS, ids=["-".join(map(str, s)) for s in MODELS])
def test_10000_replies_equal_the_reference_over_ipv4_and_ipv6(pair, sizes, tmp_path):
    model = random_model(sizes, seed=7)
    n = 10_000
    bits = np.random.default_rng(7).integers(0, 2, (n, sizes[0]), dtype=np.uint8)
    inputs = [reference.bytes_from_bits(b) for b in bits]
    want = reference.scores(model, bits)
    with served(pair, model, tmp_path):
        for family, server in enumerate(ADDRS["s0"]):
            with client.Client(server, netns=pair[0], timeout=2.0) as c:
                rep = c.run(inputs, inflight=16, max_seconds=120, scores=True, keep=True)
            assert (rep["sent"], rep["received"], rep["lost"]) == (n, n, 0), rep
            got = rep["replies"]
            assert [r.status for r in got] == ["ok"] * n
            assert [r.cls for r in got] == np.argmax(want, axis=1).tolist()
            assert [r.scores for r in got] == want.tolist()
        s = serve_stats(pair)
    assert s["serve"]["model 0"] == {"requests": 2 * n, "replies": 2 * n,
                                     "status": {k: 2 * n if k == "ok" else 0
                                                for k in client.SERVE_STATUS}}
    assert s["verdict"]["tx"] == 2 * n and s["input"]["classified"] == 2 * n
    assert sum(s["classes"].values()) == 2 * n


def ask_each(c, cases):
    """Sends each case (packets.serve_cases) and checks it gets its documented
    reply, or none; yields (what, payload, reply) of those answered ok."""
    for what, payload, status in cases:
        c.sock.send(payload)
        got = c.receive(c.timeout)
        if status in ("short_header", "not_request"):
            assert got == [], what
            continue
        assert len(got) == 1, what
        assert got[0].status == status, what
        assert (got[0].cls is None) == (status != "ok"), what
        if status == "ok":
            yield what, payload, got[0]


def test_malformed_requests_get_their_error_reply_or_are_dropped(pair, tmp_path):
    model = random_model([100, 16, 4], seed=2)
    cases = packets.serve_cases(13)
    with served(pair, model, tmp_path):
        for server in ADDRS["s0"]:
            with client.Client(server, netns=pair[0], timeout=0.3) as c:
                list(ask_each(c, cases))
        s = serve_stats(pair)
    want = {k: 0 for k in client.SERVE_STATUS}
    for _, _, status in cases:
        want[status] += 2
    # Model ids 1 and 16, 65535 (under "other": ids past NN_SRV_MODELS).
    assert s["serve"]["model 1"]["status"]["unknown_model"] == 2
    assert s["serve"]["other"]["status"]["unknown_model"] == 4
    total = {k: sum(e["status"][k] for e in s["serve"].values()) for k in want}
    assert total == want
    assert s["serve"]["model 0"]["status"]["ok"] == want["ok"]
    assert sum(e["replies"] for e in s["serve"].values()) == \
        sum(v for k, v in want.items() if k not in ("short_header", "not_request"))
    assert s["input"]["request_error"] == sum(v for k, v in want.items() if k != "ok")
    assert s["verdict"]["drop"] == want["short_header"] + want["not_request"]


def test_query_command(pair, tmp_path):
    model = random_model([256, 32, 16, 4], seed=3)
    bits = np.random.default_rng(3).integers(0, 2, (50, 256), dtype=np.uint8)
    want = reference.predict(model, bits).tolist()
    hexfile = tmp_path / "inputs.hex"
    hexfile.write_text("# one input per line\n" +
                       "".join(reference.bytes_from_bits(b).hex() + "\n" for b in bits))
    pcap = tmp_path / "requests.pcap"
    packets.write_pcap(str(pcap), [packets.request(reference.bytes_from_bits(b), PORT)
                                   for b in bits])

    def query(*args):
        return json.loads(cli.xdpnn("-n", pair[0], "-j", "query", *args, check=True).stdout)
    with served(pair, model, tmp_path):
        closed = query(ADDRS["s0"][0], "--count", "2000", "--inflight", "8")
        opened = query(ADDRS["s0"][1], "--rate", "2000", "--count", "400", "--bytes", "40")
        each = query(ADDRS["s0"][0], "--inputs", hexfile, "--each", "--scores")
        from_pcap = query(ADDRS["s0"][1], "--pcap", pcap, "--each")
        timed = query(ADDRS["s0"][0], "--rate", "100", "--count", "100000", "--max-seconds",
                      "0.5")
        unknown = query(ADDRS["s0"][0], "--model-id", "3", "--count", "5")
    assert (closed["sent"], closed["received"], closed["lost"]) == (2000, 2000, 0)
    assert closed["status"] == {"ok": 2000} and sum(closed["classes"].values()) == 2000
    assert set(closed["rtt_us"]) == {"p50", "p90", "p99", "max"}
    assert opened["received"] == 400 and 0.15 < opened["seconds"] < 5
    for rep in (each, from_pcap):
        assert [r["class"] for r in rep["replies"]] == want
    assert [r["scores"] for r in each["replies"]] == reference.scores(model, bits).tolist()
    assert 30 <= timed["sent"] <= 60 and timed["lost"] == 0  # 0.5 s at 100/s
    assert unknown["status"] == {"unknown_model": 5} and unknown["classes"] == {}
