"""Serving (attach --serve): the protocol in pure Python, then the compiled
program with BPF_PROG_TEST_RUN, its output frame held byte for byte against
the Python twin (trainer/serve.py) on thousands of requests, malformed ones
included, over IPv4 and IPv6."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrDestOpt, Raw, raw

from xdpnn import client
from xdpnn.bpf.shared import SERVE_STATUS
from xdpnn.trainer import features, reference
from xdpnn.trainer import serve as twin
from xdpnn.trainer.model import random_model
from xdpnn.traffic import packets

PORT = 9595


def check_counters(maps: dict, outcomes: list, n_classes: int) -> None:
    """The program's counters against the twin's outcomes: per input
    result and verdict, per model id (requests, replies, statuses), and
    per class of the answered requests."""
    from xdpnn.loader import compile
    c = compile.read_counters(maps["nn_counters"])
    results = collections.Counter(o.result for o in outcomes)
    assert dict(zip(features.INPUT_RESULTS, c["input"].tolist())) == \
        {r: results[r] for r in features.INPUT_RESULTS}
    verdicts = collections.Counter(o.verdict for o in outcomes)
    assert c["verdict"].tolist() == [verdicts[v] for v in compile.maps.VERDICTS]
    for k, entry in enumerate(compile.read_serve_counters(maps["nn_serve"])):
        mine = [o for o in outcomes if o.counters == k]
        assert entry["requests"] == len(mine)
        assert entry["replies"] == sum(o.verdict == "tx" for o in mine)
        assert entry["status"] == {s: sum(o.status == s for o in mine) for s in SERVE_STATUS}
    classes = collections.Counter(o.cls for o in outcomes if o.status == "ok")
    assert c["class_packets"][:n_classes].tolist() == [classes[k] for k in range(n_classes)]


def test_request_and_reply_round_trip():
    payload = client.encode_request(7, b"\x01\x02", model=3, scores=True)
    assert payload[:8] == bytes([0x58, 0x4E, 1, 1, 0, 3, 0, 2]) and payload[8:16] == \
        (7).to_bytes(8, "big")
    body = twin.reply_body(payload[:16], "ok", 2, [-5, 1 << 40, 0])
    r = client.decode_reply(body)
    assert (r.id, r.model, r.status, r.cls, r.scores) == (7, 3, "ok", 2, [-5, 1 << 40, 0])
    err = client.decode_reply(twin.reply_body(payload[:16], "unknown_model", None, None))
    assert (err.status, err.cls, err.scores) == ("unknown_model", None, None)
    with pytest.raises(ValueError):
        client.decode_reply(payload)  # a request is not a reply
    assert SERVE_STATUS[:5] == ("ok", "bad_magic", "bad_version", "unknown_model", "short_input")


def test_twin_checksums_are_what_scapy_computes():
    model = random_model([64, 8, 3], seed=1)
    for ipv6 in (False, True):
        frame = packets.request(client.encode_request(1, bytes(8), scores=True), PORT, ipv6=ipv6)
        out = twin.serve(model, frame, PORT)
        assert out.verdict == "tx"
        pkt = Ether(out.frame)
        ip = pkt[IPv6] if ipv6 else pkt[IP]
        chk = pkt[UDP].chksum
        del pkt[UDP].chksum
        if not ipv6:
            ip_chk = ip.chksum
            del ip.chksum
        again = Ether(raw(pkt))
        assert again[UDP].chksum == chk
        if not ipv6:
            assert again[IP].chksum == ip_chk
        assert (ip.src, ip.dst) == ((packets.DST_IP6, packets.SRC_IP6) if ipv6 else
                                    (packets.DST_IP, packets.SRC_IP))
        assert (pkt[UDP].sport, pkt[UDP].dport) == (PORT, packets.SRC_PORT)


def test_percentiles_are_nearest_rank():
    assert client.percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99,
                                                        "max": 100}
    assert client.percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


# --- the kernel, through BPF_PROG_TEST_RUN -------------------------------------

def frames(rng, model, n: int) -> list[bytes]:
    """n varied requests (most valid, IPv4 and IPv6), every serve case, and
    frames around them that are not requests."""
    n_bytes = (model.sizes[0] + 7) // 8
    out = []
    for i in range(n):
        inputs = rng.integers(0, 256, n_bytes + int(rng.integers(0, 3)), dtype=np.uint8)
        payload = client.encode_request(int(rng.integers(0, 2**63)), inputs.tobytes(),
                                        scores=bool(rng.random() < 0.5))
        if rng.random() < 0.1:  # damage one header byte
            k = int(rng.integers(0, 16))
            payload = payload[:k] + bytes([int(rng.integers(0, 256))]) + payload[k + 1:]
        if rng.random() < 0.05:
            payload = payload[:int(rng.integers(0, len(payload)))]
        out.append(packets.request(payload, PORT, sport=int(rng.integers(1, 65536)),
                                   ipv6=bool(i % 2)))
    cases = [p for _, p, _ in packets.serve_cases(n_bytes)]
    for ipv6 in (False, True):
        out += [packets.request(p, PORT, ipv6=ipv6) for p in cases]
    good = cases[1]
    eth = Ether(src=packets.SRC_MAC, dst=packets.DST_MAC)
    ip6 = IPv6(src=packets.SRC_IP6, dst=packets.DST_IP6)
    out += [
        raw(eth / IP(src=packets.SRC_IP, dst=packets.DST_IP, options=b"\x01" * 8) /
            UDP(dport=PORT) / Raw(good)),                     # options: not in the reply
        packets.request(good, PORT) + b"\0" * 20,                        # Ethernet padding
        packets.request(good, PORT, ipv6=True) + b"\0" * 20,
        raw(eth / ip6 / IPv6ExtHdrDestOpt() / UDP(dport=PORT) / Raw(good)),  # not served
        raw(eth / ip6 / TCP(dport=PORT) / Raw(good)),
        raw(eth / ip6 / UDP(dport=PORT ^ 1) / Raw(good)),
        packets.request(good, PORT, ipv6=True)[:14 + 39],                 # IPv6 header cut
        packets.request(good, PORT, ipv6=True)[:-1],                      # payload length past end
        packets.request(good, PORT, ipv6=True)[:14] + b"\x50" + packets.request(
            good, PORT, ipv6=True)[15:],                                  # IP version 5
    ]
    out += [f for _, f, _ in packets.crafted_cases(PORT, n_bytes) if len(f) >= 14]
    return out


def run_and_compare(prog, model, frames_: list[bytes]):
    """Each frame through the kernel and the twin; returns (mismatches, the
    twin's outcomes)."""
    from xdpnn.loader import bpf_sys, maps
    bad, outcomes = [], []
    for i, f in enumerate(frames_):
        want = twin.serve(model, f, PORT)
        verdict, _, out = bpf_sys.test_run(prog.prog_fd, f)
        got = maps.VERDICTS[verdict]
        if (got, out) != (want.verdict, want.frame):
            bad.append(f"frame {i} ({want.status or want.result}): kernel {got} {out.hex()}, "
                       f"twin {want.verdict} {want.frame.hex()}")
        outcomes.append(want)
    return bad, outcomes


SHAPES = [([256, 32, 16, 4], 3000), ([100, 16, 4], 1000), ([256, 64, 64], 1000),
          ([1, 1, 2], 200), ([1024, 512, 512, 512, 512, 64], 200)]


@pytest.mark.root
@pytest.mark.parametrize("sizes,n", SHAPES, ids=["-".join(map(str, s)) for s, _ in SHAPES])
def test_kernel_reply_equals_twin(sizes, n):
    from xdpnn.loader import compile
    model = random_model(sizes, seed=sizes[0])
    prog = compile.build(model, defines=("NN_SERVE",))
    try:
        compile.write_config(prog.maps["nn_config"], compile.maps.Config(udp_port=PORT))
        fs = frames(np.random.default_rng(sizes[0]), model, n)
        bad, outcomes = run_and_compare(prog, model, fs)
        assert not bad, f"{len(bad)} of {len(fs)} frames differ:\n" + "\n".join(bad[:5])

        statuses = collections.Counter(o.status for o in outcomes)
        assert set(statuses) == {None, *SERVE_STATUS} - {"no_room"}
        assert statuses["ok"] > n // 2

        check_counters(prog.maps, outcomes, sizes[-1])
    finally:
        prog.close()


@pytest.mark.root
def test_scores_are_the_references():
    """Replies decoded by the client hold the reference's class and scores."""
    from xdpnn.loader import bpf_sys, compile
    model = random_model([784, 64, 32, 10], seed=3)
    prog = compile.build(model, defines=("NN_SERVE",))
    try:
        bits = np.random.default_rng(3).integers(0, 2, (500, 784), dtype=np.uint8)
        want = reference.scores(model, bits)
        for i, b in enumerate(bits):
            frame = packets.request(client.encode_request(i, reference.bytes_from_bits(b),
                                                          scores=True), PORT, ipv6=bool(i % 2))
            _, _, out = bpf_sys.test_run(prog.prog_fd, frame)
            r = client.decode_reply(out[(62 if i % 2 else 42):])
            assert (r.id, r.status, r.cls, r.scores) == (i, "ok", int(np.argmax(want[i])),
                                                         want[i].tolist())
    finally:
        prog.close()


@pytest.mark.root
def test_kernel_reply_equals_twin_with_an_added_model():
    """Model 1 added beside model 0 as a program of its own (model add's
    build, bpf/tailcall.h): requests to ids 0, 1 and 2 through the attached
    program, each output frame equal to the twin's, each counted in the one
    shared nn_serve under its id."""
    import os
    import uuid

    from xdpnn.loader import bpf_sys, compile, progarray
    models = {0: random_model([256, 32, 16, 4], seed=30), 1: random_model([100, 16, 3], seed=31)}
    pdir = f"/sys/fs/bpf/xdpnn-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    progs = [compile.build(models[0], defines=("NN_SERVE",))]
    os.mkdir(pdir)
    try:
        for name in ("nn_config", "nn_serve"):
            bpf_sys.pin(progs[0].maps[name], f"{pdir}/{name}")
        compile.write_config(progs[0].maps["nn_config"], compile.maps.Config(udp_port=PORT))
        progs.append(compile.build(models[1], defines=("NN_SERVE",), added_to=pdir, model_id=1))
        progarray.put(progs[0].maps["nn_progs"], 1, progs[1].prog_fd, "nn_progs")
        assert progarray.slots(progs[0].maps["nn_progs"], "nn_progs") == \
            {1: bpf_sys.prog_info(progs[1].prog_fd).id}

        rng = np.random.default_rng(30)
        fs = []
        for i in range(1500):
            mid = int(rng.integers(0, 3))
            n_bytes = (models.get(mid, models[0]).sizes[0] + 7) // 8
            inputs = rng.integers(0, 256, n_bytes + int(rng.integers(-1, 3)), dtype=np.uint8)
            fs.append(packets.request(client.encode_request(i, inputs.tobytes(), model=mid,
                                                            scores=bool(rng.random() < 0.5)),
                                      PORT, ipv6=bool(i % 2)))
        bad, outcomes = [], []
        for i, f in enumerate(fs):
            want = twin.serve(models[0], f, PORT, added={1: models[1]})
            verdict, _, out = bpf_sys.test_run(progs[0].prog_fd, f)
            if (compile.maps.VERDICTS[verdict], out) != (want.verdict, want.frame):
                bad.append(f"frame {i} ({want.status}): kernel {out.hex()}, twin "
                           f"{want.frame.hex()}")
            outcomes.append(want)
        assert not bad, f"{len(bad)} of {len(fs)} frames differ:\n" + "\n".join(bad[:5])
        statuses = collections.Counter((o.counters, o.status) for o in outcomes)
        assert {k for k, v in statuses.items() if v > 50} == {
            (0, "ok"), (1, "ok"), (2, "unknown_model"), (0, "short_input"), (1, "short_input")}
        served = compile.read_serve_counters(progs[0].maps["nn_serve"])
        for k, entry in enumerate(served):
            mine = [o for o in outcomes if o.counters == k]
            assert entry["status"] == {s: sum(o.status == s for o in mine) for s in SERVE_STATUS}
        # Model 1's classes are counted by its own program.
        c = compile.read_counters(progs[1].maps["nn_counters"])
        classes = collections.Counter(o.cls for o in outcomes
                                      if o.counters == 1 and o.cls is not None)
        assert c["class_packets"][:3].tolist() == [classes[k] for k in range(3)]
    finally:
        for name in os.listdir(pdir):
            os.unlink(f"{pdir}/{name}")
        os.rmdir(pdir)
        for p in progs:
            p.close()
