"""Hop chaining (docs/partitioning.md, "Hop chaining"): each stage of a
model attached on an interface of its own, in a namespace of its own, the
activations carried on the wire between them; placed by `xdpnn plan --hop`
and attached by `xdpnn deploy`.

    gen [g0] <-> [a0] h0 [a1] <-> [b0] h1 [b1] <-> [c0] h2 [c1] <-> [s0] sink
                  stage 0          stage 1          stage 2

The LFC-shape chain is deployed once for the module (three stage compiles).
"""
from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import time
from contextlib import contextmanager

import cli
import numpy as np
import pytest
from xdpnn.loader import datapath, plan, stages
from xdpnn.loader.errors import UsageError
from xdpnn.trainer import reference
from xdpnn.trainer.model import DEFAULT_PORT, random_model
from xdpnn.traffic import packets
from xdpnn.traffic.sender import Capture, send_frames

LFC = [784, 1024, 1024, 1024, 10]
SMALL = [64, 48, 40, 36, 33, 5]
_ids = itertools.count()


@contextmanager
def chain_topology():
    """gen, h0, h1, h2 and sink namespaces (prefix xdpnn-hop-), the veths
    between them, a counting program on the outer ends (a veth redirect
    needs an XDP program on the receiving peer), and nothing left after."""
    from xdpnn.traffic.sink import Sink
    from xdpnn.traffic.topology import Topology

    t = Topology(f"xdpnn-hop-{os.getpid() % 100000}-{next(_ids)}")
    t.hops = [f"{t.dut}{k}" for k in range(3)]
    try:
        for ns in (t.gen, *t.hops, t.sink):
            t.add_namespace(ns)
        t.add_veth("g0", t.gen, "a0", t.hops[0], mac_a=packets.SRC_MAC)
        t.add_veth("a1", t.hops[0], "b0", t.hops[1])
        t.add_veth("b1", t.hops[1], "c0", t.hops[2])
        t.add_veth("c1", t.hops[2], "s0", t.sink, mac_b=packets.DST_MAC)
        t.places = [f"{t.hops[0]}:a0:a1", f"{t.hops[1]}:b0:b1", f"{t.hops[2]}:c0:c1"]
        with Sink(t.sink, "s0"), Sink(t.gen, "g0"):
            try:
                yield t
            finally:  # whatever the test did, nothing of xdpnn may outlive it
                for ns, iface in zip(t.hops, ("a0", "b0", "c0")):
                    if os.path.isdir(datapath.pin_dir(iface, ns)):
                        datapath.detach(iface, ns)
    finally:
        t.destroy()


def write_plan(path, out, hops):
    """`xdpnn plan --stages 3 --split --hop ...` as a function: the model as
    read from its file; the cuts fall inside layers (and so the frames
    carry the neurons done too)."""
    p = plan.make(datapath.load_model(str(path)), str(path), 3, split=True, carry="hops")
    plan.place(p, hops)
    plan.save(p, out)
    return p


def hop_stats(ns, iface):
    return json.loads(cli.xdpnn("-n", ns, "-j", "stats", iface, check=True).stdout)


def classes(ns, iface):
    return np.array(list(hop_stats(ns, iface)["classes"].values()), np.int64)


def xdp_on(ns, dev):
    link = json.loads(subprocess.run(["ip", "-j", "-n", ns, "link", "show", "dev", dev],
                                     capture_output=True, text=True, check=True).stdout)[0]
    return "xdp" in link


def our_pins(t):
    root = datapath.PIN_ROOT
    return [e for e in (os.listdir(root) if os.path.isdir(root) else [])
            if any(e.endswith("@" + ns) for ns in t.hops)]


@pytest.fixture(scope="module")
def lfc_chain(tmp_path_factory):
    """The LFC model cut in 3 stages, deployed on the 3 hops by the CLI."""
    d = tmp_path_factory.mktemp("hops")
    m = random_model(LFC, seed=11)
    m.save(d / "lfc.npz")
    with chain_topology() as t:
        p = write_plan(d / "lfc.npz", d / "plan.json", t.places)
        r = cli.xdpnn("-j", "deploy", d / "plan.json", check=True)
        t.model, t.plan, t.plan_path, t.deployed = m, p, d / "plan.json", json.loads(r.stdout)
        yield t


@pytest.mark.netns
def test_deploy_places_each_stage(lfc_chain):
    """deploy attached stage s on hop s, its peer too, as the plan says."""
    t = lfc_chain
    rep = t.deployed
    cuts = [plan.row_cut(r) for r in t.plan["stages"]]
    assert all(len(c) == 4 for c in cuts[1:])  # each hop after the first begins inside a layer
    assert rep["chain"] == "hops" and rep["stages"] == cuts
    assert [a["stage"] for a in rep["attached"]] == [0, 1, 2]
    assert [a["where"] for a in rep["attached"]] == t.places
    for ns, (a, b) in zip(t.hops, (("a0", "a1"), ("b0", "b1"), ("c0", "c1"))):
        assert xdp_on(ns, a) and xdp_on(ns, b)
    status = {(r["iface"], r["netns"]): r for r in
              json.loads(cli.xdpnn("-j", "status", check=True).stdout)}
    for s, (ns, iface) in enumerate(zip(t.hops, ("a0", "b0", "c0"))):
        r = status[(iface, ns)]
        assert r["stage"] == s and r["stages"] == cuts
        assert r["state"] == "attached"
    text = cli.xdpnn("status", check=True).stdout
    assert (f"hop: stage 1 of 3 ({stages.describe([cuts[1]])}), on the wire to stage 2 out "
            "of b1") in text


@pytest.mark.netns
def test_chain_of_hops_reference_classes(lfc_chain):
    """10,000 requests in at g0, sent in groups by the reference's class:
    each group shows as that class's counter delta at the last hop, and
    every frame arrives at the sink as it was sent."""
    t, m = lfc_chain, lfc_chain.model
    n = 10_000
    bits = np.random.default_rng(4).integers(0, 2, (n, m.sizes[0]), dtype=np.uint8)
    frames = [packets.request(reference.bytes_from_bits(b), DEFAULT_PORT) for b in bits]
    want = reference.predict(m, bits)
    assert len(set(want.tolist())) >= 3
    start = [hop_stats(ns, i) for ns, i in zip(t.hops, ("a0", "b0", "c0"))]
    sent_order = []
    deadline = time.monotonic() + 150
    with Capture(t.sink, "s0") as cap:
        before = classes(t.hops[2], "c0")
        for k in range(m.sizes[-1]):
            group = [f for f, c in zip(frames, want) if c == k]
            # Batches small enough for the veth rings (256 frames), each
            # waited for at the sink (bounded), so none is lost on the way.
            for b in range(0, len(group), 64):
                batch = group[b:b + 64]
                assert time.monotonic() < deadline, f"only {len(sent_order)} frames in time"
                assert send_frames(t.gen, "g0", batch, max_seconds=10) == len(batch)
                sent_order += batch
                got = cap.collect(len(sent_order), max_seconds=5.0)
                assert len(got) == len(sent_order), f"class {k}: {len(got)} of {len(sent_order)}"
            now = classes(t.hops[2], "c0")
            delta = now - before
            assert delta[k] == len(group) and delta.sum() == len(group), (k, delta)
            before = now
        assert cap.frames == sent_order  # intact: the carried part cut off, byte for byte
    end = [hop_stats(ns, i) for ns, i in zip(t.hops, ("a0", "b0", "c0"))]
    verdicts = [{v: e["verdict"][v] - s["verdict"][v] for v in e["verdict"]}
                for s, e in zip(start, end)]
    # Hops 0 and 1 hand every frame on (redirect out of the peer); hop 2
    # gives the class and forwards to its peer (count: the default path).
    assert [v["redirect"] for v in verdicts] == [n, n, n]
    assert all(sum(v.values()) == n for v in verdicts)
    for s, e in zip(start, end):  # each hop took every frame, and only those
        assert e["input"]["classified"] - s["input"]["classified"] == n
        assert sum(e["input"].values()) - sum(s["input"].values()) == n
    for e in end:
        assert e["stages"]["errors"] == {k: 0 for k in stages.ERRORS}
    assert [e["stages"]["stage"] for e in end] == [0, 1, 2]


@pytest.mark.netns
def test_on_wire_format_through_the_pinned_hops(lfc_chain):
    """Each attached hop's program (through its pin) run on the frame the
    hop before it gave: the outer Ethernet header (the request's addresses,
    EtherType 0x88B5), the stage header and words of the docs, then the
    request byte for byte; the last hop gives back the request and the
    reference's class, on 500 requests."""
    from xdpnn.loader import bpf_sys, compile
    t, m = lfc_chain, lfc_chain.model
    fds = [bpf_sys.get_pinned(f"{datapath.pin_dir(i, ns)}/{name}")
           for ns, i in zip(t.hops, ("a0", "b0", "c0")) for name in ("prog", "nn_counters")]
    progs, counters = fds[0::2], fds[1::2]
    try:
        bits = np.random.default_rng(8).integers(0, 2, (500, m.sizes[0]), dtype=np.uint8)
        want = reference.predict(m, bits)
        d = stages.digest(m)
        for i, b in enumerate(bits):
            req = packets.request(reference.bytes_from_bits(b), DEFAULT_PORT)
            frame = req
            for s in (0, 1):
                verdict, _, frame = bpf_sys.test_run(progs[s], frame)
                cut = stages.Cut(*plan.row_cut(t.plan["stages"][s]))
                nxt, done = cut.end, cut.end_neuron
                grown = stages.carried(m.sizes[nxt], hop=True, done=done)
                assert len(frame) == len(req) + grown == len(req) + 14 + 16 + 128 + done // 8
                assert frame[:12] == req[:12] and frame[12:14] == b"\x88\xb5"
                assert frame[14:30] == struct.pack("<QHHI", d, nxt, done // 64, m.sizes[nxt])
                assert frame[grown:] == req
            before = compile.read_counters(counters[2])["class_packets"].copy()
            verdict, _, out = bpf_sys.test_run(progs[2], frame)
            got = compile.read_counters(counters[2])["class_packets"] - before
            assert out == req and got.sum() == 1 and int(np.argmax(got)) == want[i], i
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.netns
def test_hop_refusals_on_the_wire(lfc_chain):
    """Frames sent into hop 1 (out of a1): another digest, another layer,
    another count, a header longer than the frame: dropped, each counted;
    a frame of another EtherType: the default path, counted as `other`,
    on to the sink untouched (hop 2 does the same)."""
    t, m = lfc_chain, lfc_chain.model
    d = stages.digest(m)
    # hop 1 begins inside a layer: it takes that layer's input and the neurons done
    first = stages.Cut(*plan.row_cut(t.plan["stages"][1]))
    layer, group = first.first, first.first_neuron // 64
    words = np.random.default_rng(2).integers(0, 2**63, 16 + group,
                                              dtype=np.uint64).astype("<u8").tobytes()
    req = packets.request(bytes(98), DEFAULT_PORT)
    outer = req[:12] + struct.pack("!H", stages.ETHERTYPE)

    def carrying(dig, layer, nbits, group=group, w=words):
        return outer + struct.pack("<QHHI", dig, layer, group, nbits) + w + req

    crafted = {"bad_digest": carrying(d ^ 1, layer, 1024),
               "bad_layer": carrying(d, layer + 1, 1024),
               "bad_bits": carrying(d, layer, 1000),
               # the header says 1024 activations (128 bytes) and the done words: 40 are there
               "truncated": outer + struct.pack("<QHHI", d, layer, group, 1024) + words[:40]}
    # the right layer, but not the group this hop begins at
    crafted["bad_layer "] = carrying(d, layer, 1024, group + 1)
    plain = packets.request(bytes(range(98)), DEFAULT_PORT)
    with Capture(t.sink, "s0") as cap:
        for reason, frame in crafted.items():
            before = hop_stats(t.hops[1], "b0")
            assert send_frames(t.hops[0], "a1", [frame] * 3) == 3
            deadline = time.monotonic() + 3
            while True:
                after = hop_stats(t.hops[1], "b0")
                if after["verdict"]["drop"] - before["verdict"]["drop"] >= 3 or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            errs = {k: after["stages"]["errors"][k] - before["stages"]["errors"][k]
                    for k in stages.ERRORS}
            reason = reason.strip()
            assert errs == {**{k: 0 for k in stages.ERRORS}, reason: 3}, reason
            assert after["verdict"]["drop"] - before["verdict"]["drop"] == 3, reason
            result = "truncated" if reason == "truncated" else "malformed"
            assert after["input"][result] - before["input"][result] == 3, reason
        before = [hop_stats(ns, i) for ns, i in zip(t.hops[1:], ("b0", "c0"))]
        assert send_frames(t.hops[0], "a1", [plain] * 5) == 5
        got = cap.collect(5, max_seconds=3.0)
        assert got == [plain] * 5  # nothing crafted got through; the plain ones intact
        for (ns, i), b in zip(zip(t.hops[1:], ("b0", "c0")), before):
            a = hop_stats(ns, i)
            assert a["input"]["other"] - b["input"]["other"] == 5
            assert sum(a["classes"].values()) == sum(b["classes"].values())


@pytest.mark.netns
def test_undeploy_round_trip(lfc_chain):
    """undeploy detaches every hop and removes the pins; again, it says
    nothing was there.  (Runs last in the module: the chain is gone.)"""
    t = lfc_chain
    r = json.loads(cli.xdpnn("-j", "undeploy", t.plan_path, check=True).stdout)
    assert r["detached"] == [f"stage {s} at {p}" for s, p in reversed(list(enumerate(t.places)))]
    assert r["not_attached"] == [] and r["other"] == []
    assert our_pins(t) == []
    for ns, devs in zip(t.hops, (("a0", "a1"), ("b0", "b1"), ("c0", "c1"))):
        assert not any(xdp_on(ns, dev) for dev in devs)
    again = cli.xdpnn("undeploy", t.plan_path, check=True)
    assert again.stdout.count("not attached:") == 3


@pytest.mark.netns
def test_deploy_failing_on_the_last_stage_leaves_nothing(tmp_path):
    """A plan whose last hop names a missing interface: stages 0 and 1
    attach, stage 2 fails; deploy detaches them again, says which stage
    failed where and why in one line, exit 5, no pin left.  Then a plan
    placed on one interface (tail calls), and undeploy beside it."""
    m = random_model(SMALL, seed=3)
    m.save(tmp_path / "s.npz")
    with chain_topology() as t:
        places = t.places[:2] + [f"{t.hops[2]}:nosuch0:c1"]
        write_plan(tmp_path / "s.npz", tmp_path / "p.json", places)
        r = cli.xdpnn("deploy", tmp_path / "p.json")
        assert r.returncode == 5 and len(r.stderr.splitlines()) == 1, r.stderr
        assert f"deploy: stage 2 at {places[2]}: interface nosuch0 not found" in r.stderr
        assert f"(detached again: stage 1 at {places[1]}, stage 0 at {places[0]})" in r.stderr
        assert our_pins(t) == []
        for ns, devs in zip(t.hops, (("a0", "a1"), ("b0", "b1"), ("c0", "c1"))):
            assert not any(xdp_on(ns, dev) for dev in devs)
        r = cli.xdpnn("-j", "undeploy", tmp_path / "p.json", check=True)
        assert len(json.loads(r.stdout)["not_attached"]) == 3
        # All stages on hop 0's a0 by tail calls (`plan --at`): deployed as
        # one attach.  Undeploying the hops plan leaves it alone (it is not
        # that plan's stage 0), and its own undeploy removes it.
        cli.xdpnn("plan", "--model", tmp_path / "s.npz", "--stages", "2", "--out",
                  tmp_path / "at.json", "--at", f"{t.hops[0]}:a0:a1", check=True)
        r = json.loads(cli.xdpnn("-j", "deploy", tmp_path / "at.json", check=True).stdout)
        assert r["chain"] == "tailcalls" and [a["stage"] for a in r["attached"]] == [None]
        rec = json.loads(cli.xdpnn("-n", t.hops[0], "-j", "status", check=True).stdout)
        (mine,) = [x for x in rec if x.get("netns") == t.hops[0]]
        assert len(mine["stages"]) == 2 and "stage" not in mine
        r = json.loads(cli.xdpnn("-j", "undeploy", tmp_path / "p.json", check=True).stdout)
        assert r["detached"] == [] and len(r["not_attached"]) == 2
        assert r["other"] == [f"stage 0 at {places[0]}: a whole model of {m.shape} is "
                              "attached there, not this plan's: left alone"]
        r = json.loads(cli.xdpnn("-j", "undeploy", tmp_path / "at.json", check=True).stdout)
        assert r["detached"] == [f"at {t.hops[0]}:a0:a1"] and our_pins(t) == []


def test_placement_refusals(tmp_path):
    """Placement options and files are checked before anything runs: exit
    2, one line naming the option or the plan."""
    m = random_model(SMALL, seed=2)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, str(tmp_path / "m.npz"), 3), tmp_path / "bare.json")
    base = ("plan", "--model", tmp_path / "m.npz", "--stages", "3")
    cases = {("--hop", "a:x0:x1", "--hop", "b:y0:y1"): "give --hop once for each",
             ("--hop", "a:x0", "--hop", "b:y0:y1", "--hop", "c:z0"): "out of its peer",
             ("--hop", "../a:x0:x1", "--hop", "b:y0:y1", "--hop", "c:z0"):
                 "network namespace name '../a'",
             ("--hop", "a:x/0:x1", "--hop", "b:y0:y1", "--hop", "c:z0"): "interface name 'x/0'",
             ("--hop", "a:x0:x1", "--hop", "a:x1:y1", "--hop", "c:z0"): "given twice",
             ("--hop", "x0", "--hop", "b:y0:y1", "--hop", "c:z0"): "expected NS:IFACE[:PEER]",
             ("--cpus", "1"): "give the interface with --at",
             ("--at", ":v0", "--hop", "a:b:c"): "not allowed with argument"}
    for extra, msg in cases.items():
        r = cli.xdpnn(*base, *extra)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.splitlines()) == 1, \
            (extra, r.stderr)
    # A plan without placement, and one whose file names a path as an interface.
    with pytest.raises(UsageError, match="no placement"):
        plan.targets(json.loads((tmp_path / "bare.json").read_text()), "bare.json")
    p = json.loads((tmp_path / "bare.json").read_text())
    p["placement"] = {"chain": "hops"}
    for s, row in enumerate(p["stages"]):
        row.update({"netns": "x", "iface": f"v{s}", "peer": f"w{s}"})
    p["stages"][1]["iface"] = "../../etc"
    (tmp_path / "evil.json").write_text(json.dumps(p))
    with pytest.raises(UsageError, match="stage 1: interface name"):
        plan.targets(json.loads((tmp_path / "evil.json").read_text()), "evil.json")
    assert plan.targets(json.loads((tmp_path / "bare.json").read_text()) | {
        "placement": {"chain": "tailcalls", "netns": None, "iface": "v0", "peer": None}},
        "p") == [{"stage": None, "netns": None, "iface": "v0", "peer": None, "cpus": None}]


@pytest.mark.root
def test_attach_stage_refusals(tmp_path):
    """attach --stage: combinations that make no sense, exit 2, one line."""
    m = random_model(SMALL, seed=2)
    m.save(tmp_path / "m.npz")
    plan.save(plan.make(m, None, 3), tmp_path / "p.json")
    plan.save(plan.make(m, None, 1), tmp_path / "p1.json")
    base = ("attach", "nosuch0", "--model", tmp_path / "m.npz")
    pl = ("--plan", tmp_path / "p.json")
    cases = {("--stage", "1"): "give the --plan it is a stage of",
             (*pl, "--stage", "1"): "out of --peer",
             (*pl, "--stage", "3", "--peer", "x1"): "has 3 stages (0..2)",
             (*pl, "--stage", "0", "--peer", "x1", "--action", "0=drop"): "is not the last",
             (*pl, "--stage", "1", "--peer", "x1", "--cpus", "1"): "a hop runs one stage",
             ("--plan", tmp_path / "p1.json", "--stage", "0"): "has one stage"}
    for extra, msg in cases.items():
        r = cli.xdpnn(*base, *extra)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.splitlines()) == 1, \
            (extra, r.stderr)
    r = cli.xdpnn("-n", "x", "deploy", tmp_path / "p.json")
    assert r.returncode == 2 and "drop -n" in r.stderr
