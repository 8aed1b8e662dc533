"""`xdpnn demo`: the whole flow on namespaces of its own.

Builds sender -> host under test -> receiver, attaches a trained model (by
default models/digits-default.npz, handwritten digits) to the host under
test with a forwarding peer, and sends the model's test split as inference
requests, grouped by true label, plus a few frames that are not requests.
After each group it reads the kernel's per-class counters: their deltas are
that label's row of the confusion matrix, from the kernel's own counts.  At
the end it shows the matrix, the accuracy, the frames forwarded, the
per-packet cost, and whether the kernel's rows equal the reference's.
Then it serves the same samples: the model attached with --serve on a
client-server pair, the samples sent as requests from a UDP socket, the
accuracy computed from the replies' classes.  It removes everything it
made, on Ctrl-C too.
"""
from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

import numpy as np

from xdpnn.loader import bpf_sys, datapath
from xdpnn.loader.errors import MismatchError, UsageError
from xdpnn.trainer import reference
from xdpnn.trainer.train import confusion, labeled_test_set
from xdpnn.traffic import packets
from xdpnn.traffic.sender import send_frames
from xdpnn.traffic.sink import Sink
from xdpnn.traffic.topology import SERVER_ADDRS, ClientServer, Topology

# Regenerate with `make models/digits-default.npz` (deterministic: seed 0).
DEFAULT_MODEL = Path(str(resources.files("xdpnn.models") / "digits-default.npz"))


def say(msg: str = "", end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def run(args) -> int:
    model_path = args.model or _shown(DEFAULT_MODEL)
    model = datapath.load_model(model_path)
    datapath.binary_inputs_only(model, model_path, "demo")
    if model.mode != "payload":
        raise UsageError(f"demo: model {model.shape} takes headers input; the demo sends "
                         "payload requests")
    try:
        test = labeled_test_set(model)
    except (ValueError, OSError) as e:
        raise UsageError(f"demo: {model_path}: cannot rebuild its labeled test set: {e}") \
            from None
    n_requests = args.packets or len(test.labels)
    if not 1 <= n_requests <= 100_000:
        raise UsageError(f"--packets {n_requests}: expected 1..100000")
    # The first n samples of the test split, then grouped by true label.
    order = np.argsort(test.labels[:n_requests], kind="stable")
    bits, labels = test.bits[order], test.labels[order]
    port = model.input.get("port", 9595)
    frames = [packets.request(reference.bytes_from_bits(b), port) for b in bits]
    others = [f for _, f, result in packets.crafted_cases(port, (model.sizes[0] + 7) // 8)
              if result != "classified" and len(f) >= 14]
    n_classes = model.sizes[-1]
    want = confusion(labels, reference.predict(model, bits), n_classes)
    acc = model.provenance["report"]["accuracy"]

    with Topology(f"xdpnn-demo-{os.getpid()}") as t:
        say(f"[1/6] topology: {t.gen} [g0] -> [d0] {t.dut} [d1] -> [s0] {t.sink}")
        with Sink(t.sink, "s0") as receiver, Sink(t.gen, "g0"):
            try:
                say(f"[2/6] model: {model.shape} from {model_path}, trained on "
                    f"{model.provenance['report']['data']}; test accuracy: full-precision MLP "
                    f"{acc['full_precision']:.4f}, binarized {acc['exported']:.4f}")
                say(f"[3/6] attach: xdpnn -n {t.dut} attach d0 --peer d1 --model {model_path}")
                rec = datapath.attach("d0", model_path, peer="d1", ns=t.dut)
                say(f"      program id {rec['prog_id']}, native XDP on d0 and d1, "
                    f"requests are UDP to port {port}")
                say(f"[4/6] traffic: {len(frames)} test samples as requests, grouped by true "
                    f"label, then {len(others)} other frames (ARP, IPv6, VLAN, malformed, "
                    "wrong port)")
                with bpf_sys.bpf_stats():
                    got = _send_by_label(t, model, frames, labels)
                    send_frames(t.gen, "g0", others, max_seconds=10)
                    time.sleep(0.2)
                same = _report(t, model, got, want, receiver, len(frames) + len(others),
                               rec["prog_id"])
            finally:
                datapath.detach("d0", t.dut) if os.path.isdir(datapath.pin_dir("d0", t.dut)) \
                    else None
    served = _serve(model, model_path, bits, labels)
    say("cleaning up: detached, namespaces removed")
    return 0 if same and served else MismatchError.exit_code


def _serve(model, model_path, bits: np.ndarray, labels: np.ndarray) -> bool:
    """The samples as requests to the model served from XDP; whether every
    reply came and carried the reference's class."""
    from xdpnn import client
    with ClientServer(f"xdpnn-demo-{os.getpid()}") as t:
        say(f"[6/6] serving: xdpnn -n {t.server} attach s0 --model {model_path} --serve; "
            f"xdpnn -n {t.client} query {SERVER_ADDRS[0]} ...")
        datapath.attach("s0", model_path, ns=t.server, serve=True)
        try:
            inputs = [reference.bytes_from_bits(b) for b in bits]
            with client.Client(SERVER_ADDRS[0], model.input.get("port", 9595),
                               netns=t.client, timeout=2.0) as c:
                rep = c.run(inputs, inflight=8, max_seconds=30, keep=True)
        finally:
            datapath.detach("s0", t.server)
    replies = rep.pop("replies")
    acc = client.accuracy(replies, labels.tolist())
    same = [r.cls if r else None for r in replies] == reference.predict(model, bits).tolist()
    say(f"      {rep['sent']} requests, {rep['received']} replies (XDP_TX) in {rep['seconds']} s, "
        f"rtt p50 {rep['rtt_us'].get('p50', 0):.0f} us")
    say(f"      accuracy from the replies: {acc['correct']}/{acc['answered']} = "
        f"{acc['accuracy']:.4f}; every reply's class == reference: {'yes' if same else 'NO'}")
    return same


def _class_counts(t: Topology) -> np.ndarray:
    return np.array(list(datapath.stats("d0", t.dut)["classes"].values()), np.int64)


def _shown(path: Path) -> str:
    """path relative to the working directory when it lies below it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _send_by_label(t: Topology, model, frames: list[bytes], labels: np.ndarray) -> np.ndarray:
    """Sends each label's requests and reads the per-class counter deltas
    they caused: the kernel's confusion matrix, row by row."""
    n = model.sizes[-1]
    rows = np.zeros((n, n), np.int64)
    before = _class_counts(t)
    for k in range(n):
        group = [f for f, label in zip(frames, labels) if label == k]
        if not group:
            continue
        send_frames(t.gen, "g0", group, max_seconds=10)
        # The receiving side may still be processing: wait (bounded) until
        # the group is counted.
        deadline = time.monotonic() + 2.0
        now = _class_counts(t)
        while (now - before).sum() < len(group) and time.monotonic() < deadline:
            time.sleep(0.02)
            now = _class_counts(t)
        rows[k] = now - before
        before = now
        say(f"      label {model.classes[k]:>4}: {len(group):4d} sent, kernel says " +
            ", ".join(f"{model.classes[c]} {v}" for c, v in enumerate(rows[k]) if v))
        time.sleep(0.1)  # slow enough to watch
    return rows


def _report(t, model, got, want, receiver, n_frames, prog_id) -> bool:
    s = datapath.stats("d0", t.dut)
    names = model.classes
    width = max(5, max(len(c) for c in names) + 1)
    say("[5/6] results: the kernel's confusion matrix (rows: true label, columns: class the "
        "kernel counted)")
    say("      " + " " * width + "".join(f"{c:>{width}}" for c in names))
    for name, row in zip(names, got):
        say(f"      {name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    total = int(got.sum())
    say(f"      accuracy in the kernel: {np.trace(got)}/{total} = "
        f"{np.trace(got) / max(total, 1):.4f}")
    same = bool((got == want).all())
    say(f"      kernel == reference (every row of the matrix): {'yes' if same else 'NO'}")
    other = {k: v for k, v in s["input"].items() if v and k != "classified"}
    say("      not classified, forwarded untouched: " +
        ", ".join(f"{k} {v}" for k, v in other.items()))
    received = receiver.counts()[0]
    say(f"      received at the far end: {received}/{n_frames} frames")
    info = bpf_sys.prog_info(bpf_sys.prog_fd_by_id(prog_id))
    if info.run_cnt:
        say(f"      XDP program cost (bpf_stats): {info.run_time_ns / info.run_cnt:.0f} ns "
            f"per packet over {info.run_cnt} packets, this machine, including parsing")
    return same and received == n_frames
