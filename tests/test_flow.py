"""Flow mode: the kernel's flow records, classes and flow counters equal the
Python twin's (trainer/flows.py) packet by packet, on thousands of flows
with replayed times; idle flows expire; a full table evicts."""
from __future__ import annotations

import numpy as np
import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw, raw

from xdpnn.trainer import flows, reference
from xdpnn.trainer.model import random_model

pytestmark = pytest.mark.root

EPOCH = 1_700_000_000 * 10**9


def random_packets(rng, n_flows: int, start_ns: int = EPOCH):
    """(time_ns, frame) of n_flows flows, interleaved in time: TCP, UDP, ICMP
    and GRE; 1..14 packets each, both directions, payloads of 0..1400 bytes,
    TCP flags that include FIN and RST, gaps of 1 us to 1 s, and some flows
    idle past the timeout before their last packets."""
    events = []
    for f in range(n_flows):
        proto = rng.choice([6, 6, 17, 17, 1, 47])
        a = f"198.18.{rng.integers(0, 4)}.{rng.integers(1, 255)}"
        b = f"198.19.{rng.integers(0, 4)}.{rng.integers(1, 255)}"
        pa, pb = int(rng.integers(1024, 65536)), int(rng.choice([53, 80, 443, 22, 123, 5201]))
        t = start_ns + int(rng.integers(0, 10**9))
        for i in range(int(rng.integers(1, 15))):
            gap = int(10 ** rng.uniform(3, 9))
            if rng.random() < 0.03:
                gap += flows.TIMEOUT_NS
            t += gap if i else 0
            back = i > 0 and rng.random() < 0.5
            src, dst, sp, dp = (b, a, pb, pa) if back else (a, b, pa, pb)
            payload = rng.integers(0, 256, int(rng.choice([0, 0, 8, 48, 300, 1400])),
                                   dtype=np.uint8).tobytes()
            ip = IP(src=src, dst=dst, ttl=64)
            if proto == 6:
                flags = int(rng.choice([0x02, 0x12, 0x10, 0x18, 0x18, 0x11, 0x04, 0x14]))
                l4 = TCP(sport=sp, dport=dp, flags=flags) / Raw(payload)
            elif proto == 17:
                l4 = UDP(sport=sp, dport=dp) / Raw(payload)
            elif proto == 1:
                l4 = ICMP(type=int(rng.choice([0, 8]))) / Raw(payload)
            else:
                ip.proto = 47
                l4 = Raw(payload)
            events.append((t, raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                                  / ip / l4)))
    events.sort(key=lambda e: e[0])
    return events


TABLE = 4096  # flow-table entries of the test build: more than the twin test's flows


@pytest.fixture(scope="module")
def flow_prog():
    from xdpnn.loader import compile
    model = random_model([256, 32, 7], seed=3, mode="flow")
    prog = compile.build(model, record_input=True,
                         defines=("NN_FLOW_REPLAY_CLOCK", f"NN_FLOW_ENTRIES={TABLE}"))
    yield model, prog
    prog.close()


def test_kernel_flow_records_classes_and_counters_equal_the_twin(flow_prog):
    from xdpnn.loader import compile, maps, testrun
    model, prog = flow_prog
    packets = random_packets(np.random.default_rng(11), 1000)
    runner = testrun.Runner(prog, 0)
    table = flows.FlowTable()
    before = compile.read_counters(prog.maps["nn_counters"])
    bad = []
    for i, (t, frame) in enumerate(packets):
        result, rec, infer = table.step(t, frame)
        want = rec and flows.record_bits(rec, model.sizes[0])
        if infer:
            table.classified(int(reference.predict(model, want[None])[0]))
        cls = table.last.cls if rec else None
        k = runner.run(frame, time_ns=t)
        if (k.result, k.cls) != (result, cls) or (rec and not (k.bits == want).all()):
            bad.append((i, k.result, k.cls, result, cls))
    assert not bad, f"{len(bad)} of {len(packets)} packets differ, first: {bad[:5]}"
    now = compile.read_counters(prog.maps["nn_counters"])
    got = dict(zip(maps.FLOW_EVENTS, (now["flow"] - before["flow"]).tolist()))
    assert got == table.counters
    assert table.counters["new"] == 1000 and table.counters["expired"] > 10
    assert table.counters["final"] > 300 and table.counters["cached"] > 1000
    class_flows = (now["class_flows"] - before["class_flows"]).astype(np.int64)
    assert {c: int(v) for c, v in enumerate(class_flows) if v} == \
        {c: v for c, v in table.class_flows.items() if v}
    assert len(packets) > 6000


def test_a_full_table_evicts_its_least_recent_flow_which_comes_back_as_new(flow_prog):
    from xdpnn.loader import bpf_sys, compile, testrun
    model, prog = flow_prog
    runner = testrun.Runner(prog, 0)
    first = raw(Ether() / IP(src="198.18.9.1", dst="198.18.9.2") / UDP(sport=1, dport=53))
    t = EPOCH + 2 * 10**15
    counters = lambda: compile.read_counters(prog.maps["nn_counters"])["flow"]  # noqa: E731
    before = counters()
    runner.run(first, time_ns=t)
    runner.run(first, time_ns=t + 1000)
    assert (counters() - before).tolist()[:2] == [1, 0]  # one new flow, seen twice
    # 2 * TABLE other flows, each newer than the first: the first is evicted.
    for n in range(2 * TABLE):
        f = raw(Ether() / IP(src="198.18.10.1", dst=f"198.19.{n >> 8}.{n & 255}")
                / UDP(sport=2, dport=53))
        runner.run(f, time_ns=t + 2000 + n)
    runner.run(first, time_ns=t + 10**6)
    assert (counters() - before).tolist()[:2] == [2 * TABLE + 2, 0]
    info = bpf_sys.map_info(prog.maps["nn_flows"])
    assert info.max_entries == TABLE
    # What `stats` reports: a full table, and the evictions the counters miss.
    from xdpnn.loader import datapath, maps
    table = {"capacity": TABLE, "entries": bpf_sys.map_entries(prog.maps["nn_flows"], maps.FlowKey,
                                                               maps.Flow, "nn_flows")}
    new = int(counters()[0])
    summary = datapath.flow_table_summary(table, new, model.classes)
    assert 0.9 * TABLE <= summary["entries"] <= TABLE  # the LRU evicts a little early per CPU
    assert summary["evicted"] == new - summary["entries"] >= TABLE
    keys = {(k.addr[0], k.addr[1], k.port[0], k.port[1], k.proto) for k, _ in table["entries"]}
    assert len(keys) == summary["entries"]
    assert (0xC6120901, 0xC6120902, 1, 53, 17) in keys  # the first flow, back as new


@pytest.mark.netns
def test_attached_flow_model_caches_classes_and_stats_counts_flows(veth_pair, tmp_path):
    """On a veth: a 2-packet UDP exchange (open), a TCP flow of 10 packets
    (final at the 8th, two cached) and one ended by FIN at its 3rd."""
    import json
    import subprocess

    from cli import xdpnn
    from xdpnn.traffic.sender import send_frames
    path = tmp_path / "flow.npz"
    random_model([256, 16, 3], seed=5, mode="flow").save(str(path))
    a, b = "198.18.0.1", "198.18.0.2"

    def tcp(i, flags, sport, back=False):
        ip = IP(src=b, dst=a) if back else IP(src=a, dst=b)
        ports = dict(sport=80, dport=sport) if back else dict(sport=sport, dport=80)
        return raw(Ether() / ip / TCP(flags=flags, seq=i, **ports) / Raw(b"x" * i))
    frames = [raw(Ether() / IP(src=a, dst=b) / UDP(sport=5000, dport=53) / Raw(b"q" * 30)),
              raw(Ether() / IP(src=b, dst=a) / UDP(sport=53, dport=5000) / Raw(b"r" * 90))]
    frames += [tcp(i, "A", 40000, back=i % 2) for i in range(10)]
    frames += [tcp(0, "S", 40001), tcp(1, "SA", 40001, back=True), tcp(2, "FA", 40001)]
    for dev in ("xv0", "xv1"):
        subprocess.run(["ip", "-n", veth_pair, "link", "set", dev, "up"], check=True)
    xdpnn("-n", veth_pair, "attach", "xv1", "--model", path, check=True)
    try:
        assert send_frames(veth_pair, "xv0", frames) == len(frames)
        s = json.loads(xdpnn("-n", veth_pair, "-j", "stats", "xv1", check=True).stdout)
        text = xdpnn("-n", veth_pair, "stats", "xv1", check=True).stdout
        table = json.loads(xdpnn("-n", veth_pair, "-j", "flows", "xv1", check=True).stdout)
        table_text = xdpnn("-n", veth_pair, "flows", "xv1", "--limit", "2", check=True).stdout
    finally:
        xdpnn("-n", veth_pair, "detach", "xv1", check=True)
    assert s["input"]["classified"] == len(frames)
    assert s["flows"]["events"] == {"new": 3, "expired": 0, "final": 2, "cached": 2}
    assert sum(s["flows"]["classes"].values()) == 3
    assert sum(s["classes"].values()) == len(frames)
    assert "flows: new 3, expired 0, final 2, cached 2; by class:" in text
    t = s["flows"]["table"]
    assert (t["capacity"], t["entries"], t["evicted"]) == (65536, 3, 0)
    assert t["states"] == {"open": 1, "deciding": 0, "final": 2}
    assert t["classes"] == s["flows"]["classes"]
    assert "flow table: 3 of 65536 entries (open 1, deciding 0, final 2), 0 evicted" in text
    # `xdpnn flows`: initiator first, whichever end has the lower address.
    got = {(f["proto"], tuple(f["initiator"]), tuple(f["responder"]), f["packets"], f["state"])
           for f in table["flows"]}
    assert got == {(17, (a, 5000), (b, 53), 2, "open"), (6, (a, 40000), (b, 80), 8, "final"),
                   (6, (a, 40001), (b, 80), 3, "final")}
    assert all(f["class"] in s["classes"] for f in table["flows"])
    assert len(table_text.splitlines()) == 4 and "3 of 65536 flow entries" in table_text
