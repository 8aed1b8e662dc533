"""`xdpnn evaluate`: a model's accuracy on labeled captures, as the kernel
classifies them.

Every frame of DIR/<class>.pcap goes, in file order, through the compiled
program with BPF_PROG_TEST_RUN (testrun.Runner, the program `attach`
loads); the class is the one whose counter moved.  The Python reference
classifies the same frames, and any disagreement is counted (and makes the
command fail): the accuracy shown is the kernel's and the reference's.

Per packet: frames the program classifies, against their file's class.
Per flow (both directions of a 5-tuple, traffic.capture.flow_key): a
flow's class is the majority of its packets' classes, a tie going to the
tied class seen first; the first classified packet's class is shown too,
the decision a datapath that classifies once per flow would make.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from xdpnn.loader import compile, testrun
from xdpnn.loader.errors import UsageError
from xdpnn.trainer.model import DEFAULT_PORT, Model


def read_captures(directory: str, classes: list[str]) -> dict[str, list[tuple[int, bytes]]]:
    """{class: [(time_ns, frame)]} from DIR/*.pcap[ng]; every file stem must be a class."""
    from xdpnn.traffic.packets import read_pcap_times
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"evaluate: --pcaps {directory}: no such directory")
    files = sorted(p for p in d.iterdir() if p.suffix in (".pcap", ".pcapng"))
    if not files:
        raise UsageError(f"evaluate: --pcaps {directory}: no .pcap files (one per class, "
                         "named after it)")
    out = {}
    for p in files:
        if p.stem not in classes:
            raise UsageError(f"evaluate: {p}: '{p.stem}' is not a class of the model "
                             f"({', '.join(classes)})")
        try:
            out[p.stem] = read_pcap_times(str(p))
        except Exception as e:  # scapy raises many kinds for a file that is not a pcap
            raise UsageError(f"evaluate: {p}: cannot read it as a pcap file ({e})") from None
    return out


def evaluate(model: Model, captures: dict[str, list[tuple[int, bytes]]], progress=None) -> dict:
    """Flow models replay each file in order with the capture's times (a
    replay build: NN_FLOW_REPLAY_CLOCK), against the flow twin."""
    from xdpnn.trainer import flows as flow_twin
    from xdpnn.traffic.capture import flow_key
    flow_mode = model.mode == "flow"
    table = flow_twin.FlowTable()
    port = model.input.get("port", DEFAULT_PORT)
    n = len(model.classes)
    packets = np.zeros((n, n), np.int64)
    flows = np.zeros((n, n), np.int64)
    flows_first = np.zeros((n, n), np.int64)
    not_run = Counter()       # frames the kernel cannot test-run, by reason
    unclassified = Counter()  # frames the program does not classify, by input result
    mismatches, examples = 0, []
    started = time.monotonic()
    # Flow mode is one program (its replay clock); a staged flow model is
    # refused before anything is built.
    if flow_mode:
        from xdpnn.loader.datapath import one_program_only
        one_program_only(model, None, "evaluate",
                         "a flow-mode model runs as one program: train a smaller one")
    prog = (compile.build(model, defines=("NN_FLOW_REPLAY_CLOCK",)) if flow_mode
            else testrun.build(model))
    try:
        runner = testrun.Runner(prog, port)
        done = 0
        for name, frames in captures.items():
            true = model.classes.index(name)
            votes: dict = {}  # flow -> (Counter of classes, first class seen, order)
            for now, frame in frames:
                done += 1
                if len(frame) < 14 or len(frame) > testrun.MAX_FRAME:
                    not_run["shorter than Ethernet" if len(frame) < 14
                            else f"longer than {testrun.MAX_FRAME} bytes"] += 1
                    continue
                if flow_mode:
                    k = runner.run(frame, time_ns=now)
                    ref_result, ref_cls = flow_twin.run(model, [(now, frame)], table)[0]
                else:
                    k = runner.run(frame)
                    ref_result, ref_cls, _ = testrun.expected(model, frame, port)
                if (k.result, k.cls) != (ref_result, ref_cls):
                    mismatches += 1
                    if len(examples) < 5:
                        examples.append({"file": name, "kernel": [k.result, k.cls],
                                         "reference": [ref_result, ref_cls],
                                         "frame_hex": frame.hex()})
                if k.cls is None:
                    unclassified[k.result] += 1
                    continue
                packets[true, k.cls] += 1
                v = votes.setdefault(flow_key(frame), [Counter(), k.cls, {}])
                v[0][k.cls] += 1
                v[2].setdefault(k.cls, sum(v[0].values()))
                if progress and done % 1000 == 0:
                    progress(done)
            for counts, first, order in votes.values():
                top = max(counts.values())
                majority = min((c for c in counts if counts[c] == top), key=order.get)
                flows[true, majority] += 1
                flows_first[true, first] += 1
    finally:
        prog.close()
    return {"model": model.shape, "input": model.mode, "classes": model.classes,
            "packets": _scores(packets, model.classes),
            "flows": _scores(flows, model.classes),
            "flows_first_packet": _scores(flows_first, model.classes),
            "unclassified": dict(unclassified), "not_run": dict(not_run),
            "reference_mismatches": mismatches, "examples": examples,
            "seconds": round(time.monotonic() - started, 1)}


def _scores(confusion: np.ndarray, classes: list[str]) -> dict:
    total = int(confusion.sum())
    per = {c: {"count": int(confusion[i].sum()),
               "accuracy": round(float(confusion[i, i] / confusion[i].sum()), 4)}
           for i, c in enumerate(classes) if confusion[i].sum()}
    return {"count": total,
            "accuracy": round(float(np.trace(confusion) / total), 4) if total else None,
            "per_class": per, "confusion": confusion.tolist()}


def format_report(r: dict) -> str:
    classes = r["classes"]
    lines = [f"model {r['model']} ({r['input']}): {r['packets']['count']} packets in "
             f"{r['flows']['count']} flows classified, {r['seconds']} s",
             f"  {'class':<12}{'packets':>9}{'right':>8}{'flows':>8}{'right':>8}"
             f"{'1st pkt':>9}"]
    for c in classes:
        p = r["packets"]["per_class"].get(c)
        if not p:
            continue
        f = r["flows"]["per_class"].get(c, {"count": 0, "accuracy": 0})
        f1 = r["flows_first_packet"]["per_class"].get(c, {"accuracy": 0})
        lines.append(f"  {c:<12}{p['count']:>9}{p['accuracy']:>8.1%}{f['count']:>8}"
                     f"{f['accuracy']:>8.1%}{f1['accuracy']:>9.1%}")
    acc = [r[k]["accuracy"] or 0 for k in ("packets", "flows", "flows_first_packet")]
    lines.append(f"  {'overall':<12}{r['packets']['count']:>9}{acc[0]:>8.1%}"
                 f"{r['flows']['count']:>8}{acc[1]:>8.1%}{acc[2]:>9.1%}")
    for what in ("packets", "flows"):
        lines.append(f"  confusion ({what}; rows: true class, columns: the kernel's)")
        width = max(7, *(len(c) + 1 for c in classes))
        lines.append("  " + " " * 12 + "".join(f"{c:>{width}}" for c in classes))
        for c, row in zip(classes, r[what]["confusion"]):
            if sum(row):
                lines.append(f"  {c:<12}" + "".join(f"{v:>{width}}" for v in row))
    if r["unclassified"]:
        lines.append("  not classified: " + ", ".join(f"{k} {v}"
                                                     for k, v in r["unclassified"].items()))
    if r["not_run"]:
        lines.append("  not run: " + ", ".join(f"{k} {v}" for k, v in r["not_run"].items()))
    lines.append(f"  kernel vs reference: {r['reference_mismatches']} mismatches")
    return "\n".join(lines)

