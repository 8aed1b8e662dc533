"""Tier 3: the datapath attached to veth interfaces in namespaces of the
test's own, with real packets through it.

    gen [g0] <-> [d0] dut [d1] <-> [s0] sink    (traffic/topology.py)
"""
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

import cli  # noqa: E402
from xdpnn.trainer import features, reference  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402
from xdpnn.traffic import packets  # noqa: E402
from xdpnn.traffic.sender import Capture, send_frames  # noqa: E402
from xdpnn.traffic.sink import Sink  # noqa: E402
from xdpnn.traffic.topology import Topology  # noqa: E402

PORT = 9595
_ids = itertools.count()


def xdpnn(*args, check=True):
    return cli.xdpnn(*args, check=check)


@contextmanager
def topology(drop=False):
    """A fresh topology, with counting programs on the outer ends (a veth
    redirect needs an XDP program on the receiving peer)."""
    with Topology(f"xt{os.getpid() % 10000}-{next(_ids)}") as t:
        with Sink(t.sink, "s0", drop=drop) as sink, Sink(t.gen, "g0"):
            t.sink_counter = sink
            try:
                yield t
            finally:  # whatever the test did, nothing of xdpnn may outlive it
                xdpnn("-n", t.dut, "detach", "d0", check=False)


@contextmanager
def monitor_port(t):
    """A third veth pair, dut [m0] <-> [m1] monitor, and a counting program on
    m1: a redirect into m0 needs an XDP program on m0's peer."""
    mon = f"{t.dut}-mon"
    t.add_namespace(mon)
    t.add_veth("m0", t.dut, "m1", mon)
    with Sink(mon, "m1") as sink:
        yield sink


def wait_count(sink, n, max_seconds=3.0):
    """The sink's packet count once it reaches n (delivery is asynchronous)."""
    deadline = time.monotonic() + max_seconds
    while sink.counts()[0] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # and nothing more arrives
    return sink.counts()[0]


@pytest.fixture
def topo():
    with topology() as t:
        yield t


@pytest.fixture
def model_file(tmp_path):
    def make(sizes=(256, 32, 16, 4), seed=1, mode="payload"):
        m = random_model(list(sizes), seed=seed, mode=mode)
        path = tmp_path / f"model-{'-'.join(map(str, sizes))}-{seed}-{mode}.npz"
        m.save(path)
        return m, str(path)
    return make


def requests(model, n, seed):
    bits = np.random.default_rng(seed).integers(0, 2, (n, model.sizes[0]), dtype=np.uint8)
    return bits, [packets.request(reference.bytes_from_bits(b), PORT) for b in bits]


def stats(t):
    return json.loads(xdpnn("-n", t.dut, "-j", "stats", "d0").stdout)


def xdp_attached(ns, dev):
    link = json.loads(subprocess.run(["ip", "-j", "-n", ns, "link", "show", "dev", dev],
                                     capture_output=True, text=True, check=True).stdout)[0]
    return "xdp" in link


def pin_dir(t):
    return Path(f"/sys/fs/bpf/xdpnn/d0@{t.dut}")


def test_forwards_23_packets_intact_and_counts_each_class(topo, model_file):
    model, path = model_file()
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path)
    assert xdp_attached(topo.dut, "d0") and xdp_attached(topo.dut, "d1")
    bits, frames = requests(model, 23, seed=5)
    with Capture(topo.sink, "s0") as cap:
        assert send_frames(topo.gen, "g0", frames) == 23
        got = cap.collect(23)
    assert got == frames  # every frame arrived, in order, byte for byte

    s = stats(topo)
    assert s["input"]["classified"] == 23 and sum(s["input"].values()) == 23
    assert s["verdict"]["redirect"] == 23 and sum(s["verdict"].values()) == 23
    want = np.bincount(reference.predict(model, bits), minlength=model.sizes[-1])
    assert list(s["classes"].values()) == want.tolist()

    xdpnn("-n", topo.dut, "detach", "d0")
    assert not xdp_attached(topo.dut, "d0") and not xdp_attached(topo.dut, "d1")
    assert not pin_dir(topo).exists()


def test_drop_action_drops_exactly_that_class_and_set_changes_it(topo, model_file):
    model, path = model_file()
    bits, frames = requests(model, 60, seed=6)
    classes = reference.predict(model, bits)
    victim = int(np.bincount(classes).argmax())
    name = model.classes[victim]
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path,
          "--action", f"{name}=drop")
    with Capture(topo.sink, "s0") as cap:
        send_frames(topo.gen, "g0", frames)
        got = cap.collect(60, max_seconds=3)
    assert got == [f for f, c in zip(frames, classes) if c != victim]
    assert stats(topo)["verdict"]["drop"] == int((classes == victim).sum())

    xdpnn("-n", topo.dut, "set", "d0", "--action", f"{name}=count")
    with Capture(topo.sink, "s0") as cap:
        send_frames(topo.gen, "g0", frames)
        assert cap.collect(60) == frames


def test_swap_replaces_the_model_in_place(topo, model_file):
    old, old_path = model_file(seed=1)
    new, new_path = model_file(seed=2)
    bits, frames = requests(old, 40, seed=7)
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", old_path)
    before = [r for r in json.loads(xdpnn("-j", "status").stdout) if r["netns"] == topo.dut]
    xdpnn("-n", topo.dut, "swap", "d0", "--model", new_path)
    with Capture(topo.sink, "s0"):
        send_frames(topo.gen, "g0", frames)
    want = np.bincount(reference.predict(new, bits), minlength=4)
    assert list(stats(topo)["classes"].values()) == want.tolist()
    after = [r for r in json.loads(xdpnn("-j", "status").stdout) if r["netns"] == topo.dut]
    assert before[0]["prog_id"] == after[0]["prog_id"]  # same program, not re-attached
    assert before[0]["model_map_id"] != after[0]["model_map_id"]  # a new inner map
    assert after[0]["model"]["path"] == new_path

    _, other_shape = model_file(sizes=(128, 8, 4))
    r = xdpnn("-n", topo.dut, "swap", "d0", "--model", other_shape, check=False)
    assert r.returncode == 2 and "128-8-4" in r.stderr
    assert xdp_attached(topo.dut, "d0")


def test_failed_attach_leaves_nothing_behind(topo, model_file):
    _, path = model_file()
    r = xdpnn("-n", topo.dut, "attach", "d0", "--peer", "nope0", "--model", path, check=False)
    assert r.returncode == 5 and "nope0" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not xdp_attached(topo.dut, "d0") and not pin_dir(topo).exists()

    # A program already there is never replaced.
    with Sink(topo.dut, "d1"):
        r = xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path, check=False)
        assert r.returncode == 5 and "d1" in r.stderr
        assert not xdp_attached(topo.dut, "d0") and not pin_dir(topo).exists()

    # Twice on one interface: refused, the first one untouched.
    xdpnn("-n", topo.dut, "attach", "d0", "--model", path)
    r = xdpnn("-n", topo.dut, "attach", "d0", "--model", path, check=False)
    assert r.returncode == 7 and xdp_attached(topo.dut, "d0")


def test_generic_mode_and_no_peer_pass_to_the_stack(topo, model_file):
    model, path = model_file()
    xdpnn("-n", topo.dut, "attach", "d0", "--model", path, "--xdp-mode", "generic")
    bits, frames = requests(model, 23, seed=8)
    send_frames(topo.gen, "g0", frames)
    s = stats(topo)
    assert s["verdict"]["pass"] == 23 and s["input"]["classified"] == 23
    assert topo.sink_counter.counts()[0] == 0  # not forwarded: no peer
    xdpnn("-n", topo.dut, "detach", "d0")
    assert not xdp_attached(topo.dut, "d0")


def test_headers_mode_classifies_all_ipv4_like_the_twin(model_file):
    model, path = model_file(sizes=(256, 64, 8), mode="headers")
    frames = packets.random_frames(np.random.default_rng(9), 200)
    with topology(drop=True) as t:  # a rate-style receiver: counts, then drops
        xdpnn("-n", t.dut, "attach", "d0", "--peer", "d1", "--model", path)
        send_frames(t.gen, "g0", frames)
        s = stats(t)
        assert t.sink_counter.counts()[0] == 200
    bits = np.stack([features.model_input(f, "headers", 256, PORT)[1] for f in frames])
    want = np.bincount(reference.predict(model, bits), minlength=8)
    assert s["input"]["classified"] == 200
    assert list(s["classes"].values()) == want.tolist()


def test_malformed_frames_are_counted_by_reason_and_forwarded_untouched(topo, model_file):
    model, path = model_file()
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path)
    # Frames shorter than an Ethernet header cannot be sent on a veth.
    cases = [(d, f, r) for d, f, r in packets.crafted_cases(PORT, 32) if len(f) >= 14]
    with Capture(topo.sink, "s0") as cap:
        send_frames(topo.gen, "g0", [f for _, f, _ in cases])
        got = cap.collect(len(cases))
    # veth pads short frames to 60 bytes, and a packet socket reports a VLAN
    # tag out of band, so compare what the receiver's socket can see.
    seen = [f[:12] + f[16:] if r == "vlan" else f for _, f, r in cases]
    assert [g[:len(f)] for g, f in zip(got, seen)] == seen
    s = stats(topo)
    want = {}
    for _, f, result in cases:
        assert features.model_input(f, "payload", 256, PORT)[0] == result
        want[result] = want.get(result, 0) + 1
    assert {k: v for k, v in s["input"].items() if v} == want


def test_stats_interval_prints_samples_with_rates(topo, model_file):
    _, path = model_file()
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path)
    r = xdpnn("-n", topo.dut, "-j", "stats", "d0", "0.2", "3")
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(samples) == 3
    assert all(set(s["rates"]) == {"classes", "input", "verdict"} for s in samples)
    text = xdpnn("-n", topo.dut, "stats", "d0", "0.1", "1").stdout
    assert "pkt/s" in text and "class0" in text


def test_redirect_sends_a_class_out_of_its_target_with_or_without_a_peer(topo, model_file):
    model, path = model_file()
    bits, frames = requests(model, 60, seed=10)
    classes = reference.predict(model, bits)
    victim = int(np.bincount(classes).argmax())
    name, n_victim = model.classes[victim], int((classes == victim).sum())
    others = [f for f, c in zip(frames, classes) if c != victim]
    attach = ("-n", topo.dut, "attach", "d0", "--model", path)
    with monitor_port(topo) as mon:
        r = xdpnn(*attach, "--peer", "d1", "--action", f"{name}=redirect", check=False)
        assert r.returncode == 2 and f"{name}=redirect:IFACE" in r.stderr
        for target, code in (("d0", 2), ("d1", 2), ("nope0", 5)):
            r = xdpnn(*attach, "--peer", "d1", "--action", f"{name}=redirect:{target}",
                      check=False)
            assert r.returncode == code and target in r.stderr, r.stderr
            assert not xdp_attached(topo.dut, "d0") and not pin_dir(topo).exists()

        xdpnn(*attach, "--peer", "d1", "--action", f"{name}=redirect:m0")
        rec = [r for r in json.loads(xdpnn("-j", "status").stdout) if r["netns"] == topo.dut]
        assert rec[0]["actions"][name] == "redirect:m0"
        assert f"{name}=redirect:m0" in xdpnn("status").stdout
        with Capture(topo.sink, "s0") as cap:
            assert send_frames(topo.gen, "g0", frames) == 60
            assert cap.collect(60, max_seconds=2) == others  # the default path
        assert wait_count(mon, n_victim) == n_victim
        s = stats(topo)
        assert s["verdict"]["redirect"] == 60 and sum(s["verdict"].values()) == 60
        assert s["classes"][name] == n_victim

        # Without a peer the others go to the stack; set turns redirect on and off.
        xdpnn("-n", topo.dut, "detach", "d0")
        xdpnn(*attach)
        r = xdpnn("-n", topo.dut, "set", "d0", "--action", f"{name}=redirect", check=False)
        assert r.returncode == 2 and "redirect:IFACE" in r.stderr
        xdpnn("-n", topo.dut, "set", "d0", "--action", f"{name}=redirect:m0")
        send_frames(topo.gen, "g0", frames)
        assert wait_count(mon, 2 * n_victim) == 2 * n_victim
        s = stats(topo)
        assert (s["verdict"]["redirect"], s["verdict"]["pass"]) == (n_victim, 60 - n_victim)
        xdpnn("-n", topo.dut, "set", "d0", "--action", f"{name}=count")
        send_frames(topo.gen, "g0", frames)
        assert wait_count(mon, 2 * n_victim + 1, max_seconds=0.5) == 2 * n_victim
        assert stats(topo)["verdict"]["pass"] == 120 - n_victim
        assert topo.sink_counter.counts()[0] == 60 - n_victim  # only the first, forwarded


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def exporter(*args):
    """`xdpnn ... exporter` on a free loopback port; yields (process, port)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", *args, "--listen",
                             f"127.0.0.1:{port}"], cwd=cli.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the exporter never listened"
                time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def scrape(port):
    """{(metric, labels): value} from one HTTP GET of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_exporter_serves_the_counters_of_each_direction(topo, model_file):
    model, path = model_file()
    xdpnn("-n", topo.dut, "attach", "d0", "--peer", "d1", "--model", path,
          "--action", f"{model.classes[1]}=drop")
    _, forth = requests(model, 200, seed=11)
    _, back = requests(model, 101, seed=12)
    def send():  # in bursts, so that scrapes fall while traffic flows
        for k in range(0, 200, 20):
            send_frames(topo.gen, "g0", forth[k:k + 20])
            time.sleep(0.05)
        send_frames(topo.sink, "s0", back)

    with exporter("-n", topo.dut, "exporter", "d0") as (proc, port):
        sender = threading.Thread(target=send)
        sender.start()
        during = []
        while sender.is_alive():
            during.append(scrape(port))
        sender.join()
        deadline = time.monotonic() + 5
        while sum(stats(topo)["input"].values()) < 301 and time.monotonic() < deadline:
            time.sleep(0.05)
        got, s = scrape(port), stats(topo)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    at = {"iface": "d0", "netns": topo.dut}
    classified = tuple(sorted({**at, "ingress": "d0", "result": "classified"}.items()))
    seen = [d.get(("xdpnn_input_packets_total", classified), 0) for d in during]
    assert during and seen == sorted(seen) and seen[-1] <= 200
    assert {i: sum(c["input"].values()) for i, c in s["ingress"].items()} == \
        {"d0": 200, "d1": 101}
    for ingress, c in s["ingress"].items():
        for group, metric, label in (("classes", "xdpnn_class_packets_total", "class"),
                                     ("input", "xdpnn_input_packets_total", "result"),
                                     ("verdict", "xdpnn_verdict_packets_total", "verdict")):
            for name, v in c[group].items():
                key = tuple(sorted({**at, "ingress": ingress, label: name}.items()))
                assert got[(metric, key)] == v, (metric, key)
    rec = [r for r in json.loads(xdpnn("-j", "status").stdout) if r["netns"] == topo.dut][0]
    info = [dict(k) for name, k in got if name == "xdpnn_model_info"]
    assert info == [{**at, "shape": "256-32-16-4", "sha256": rec["model"]["sha256"],
                     "model_map_id": str(rec["model_map_id"]), "input": "payload", "path": path,
                     "attached_at": rec["attached_at"]}]

    # Without IFACE: every attached datapath; Ctrl-C stops it cleanly too.
    with exporter("exporter") as (proc, port):
        got = scrape(port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    key = tuple(sorted({**at, "ingress": "d1", "result": "classified"}.items()))
    assert got[("xdpnn_input_packets_total", key)] == s["ingress"]["d1"]["input"]["classified"]
