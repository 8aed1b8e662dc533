"""`xdpnn COMMAND`: the command line.  Each command is one function below;
docs/commands.md is their manual."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from xdpnn.loader import errors
from xdpnn.loader.errors import UsageError, XdpnnError

EPILOGS = {
    "attach": """examples:
  sudo xdpnn attach veth0 --model model.npz
  sudo xdpnn -n dut attach d0 --model model.npz --peer d1 --action attack=drop
  sudo xdpnn -n dut attach d0 --model model.npz --peer d1 --action attack=redirect:mon0
  sudo xdpnn attach eth1 --model flows.npz --input headers --xdp-mode generic""",
    "detach": "examples:\n  sudo xdpnn detach veth0\n  sudo xdpnn -n dut detach d0",
    "status": "examples:\n  sudo xdpnn status\n  sudo xdpnn -j status",
    "stats": """examples:
  sudo xdpnn stats veth0          totals since attach
  sudo xdpnn stats veth0 1        every second, with rates, until Ctrl-C
  sudo xdpnn -j stats veth0 1 5   five samples as JSON lines""",
    "swap": "examples:\n  sudo xdpnn swap veth0 --model retrained.npz",
    "set": """examples:
  sudo xdpnn set veth0 --action attack=drop --action benign=count
  sudo xdpnn set veth0 --action all=count --port 9696
  sudo xdpnn set veth0 --action attack=redirect:mon0""",
    "predict": """examples:
  sudo xdpnn predict --model model.npz --pcap requests.pcap
  sudo xdpnn predict --model model.npz --hex 020000000002020000000001080045...""",
    "verify": """examples:
  sudo xdpnn verify --model model.npz --samples 10000
  sudo xdpnn verify --shape 784-256-256-10 --samples 10000 --seed 7""",
    "model": """examples:
  xdpnn model random 784-64-32-10 --out random.npz --seed 1
  xdpnn model show random.npz""",
    "send": """examples:
  sudo xdpnn -n gen send g0 --count 23                 23 random 32-byte requests
  sudo xdpnn -n gen send g0 --count 1000 --bytes 98 --port 9696
  sudo xdpnn -n gen send g0 --pcap captured.pcap""",
    "demo": """examples:
  sudo xdpnn demo
  sudo xdpnn demo --packets 500 --model model.npz""",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in NEEDS_ROOT and os.geteuid() != 0:
            raise errors.PrivilegeError(f"{args.command}: needs root (BPF and network "
                                          "administration): run it with sudo")
        return args.func(args) or 0
    except XdpnnError as e:
        msg = str(e) if str(e).startswith(f"{args.command}:") else f"{args.command}: {e}"
        return report_error(args, msg, e.exit_code)
    except KeyboardInterrupt:
        return report_error(args, f"{args.command}: interrupted", 130)
    except OSError as e:  # a file, socket or command the step needed
        return report_error(args, f"{args.command}: {e}", 1)


def report_error(args, message: str, code: int) -> int:
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    else:
        print(f"xdpnn: {message}", file=sys.stderr)
    return code


def out(args, data, text: str) -> None:
    print(json.dumps(data, indent=None if args.command == "stats" else 1) if args.json else text)


# --- commands ---------------------------------------------------------------

def cmd_attach(args):
    from xdpnn.loader import datapath
    if args.ebpf:
        return print_ebpf(datapath.load_model(args.model))
    rec = datapath.attach(args.iface, args.model, peer=args.peer, input_mode=args.input,
                          port=args.port, actions=args.action, xdp_mode=args.xdp_mode,
                          ns=args.netns)
    where = f" (netns {args.netns})" if args.netns else ""
    peer = f", forwarding to {args.peer}" if args.peer else ""
    port = f" port {rec['port']}" if rec["port"] else ""
    out(args, rec, f"attached {rec['model']['shape']} ({rec['input']}{port}) to "
                   f"{args.iface}{where}{peer}, {args.xdp_mode} mode")


def cmd_detach(args):
    from xdpnn.loader import datapath
    rep = datapath.detach(args.iface, args.netns)
    lines = [f"detached from {', '.join(rep['detached']) or 'nothing'}; pins removed"]
    lines += [f"  skipped {s}" for s in rep["skipped"]]
    out(args, rep, "\n".join(lines))


def cmd_status(args):
    from xdpnn.loader import datapath
    recs = datapath.status()
    if not recs:
        return out(args, [], "nothing attached")
    lines = []
    for r in recs:
        if "model" not in r:
            lines.append(f"{r['iface']}: {r['state']}")
            continue
        ns = f" (netns {r['netns']})" if r.get("netns") else ""
        peer = f" <-> {r['peer']}" if r.get("peer") else ""
        port = f" port {r['port']}" if r.get("port") else ""
        acts = ", ".join(f"{c}={a}" for c, a in r["actions"].items() if a != "count")
        lines.append(f"{r['iface']}{peer}{ns}: {r['state']}, {r['xdp_mode']} mode, prog id "
                     f"{r['prog_id']}\n  model {r['model']['shape']} {r['model']['path']} "
                     f"(sha256 {r['model']['sha256'][:12]}, slot {r['active_slot']})\n"
                     f"  input {r['input']}{port}; actions: {acts or 'count all'}")
    out(args, recs, "\n".join(lines))


def cmd_stats(args):
    from xdpnn.loader import datapath
    if args.interval is None:
        s = datapath.stats(args.iface, args.netns)
        return out(args, s, format_stats(s, None))
    if args.interval <= 0:
        raise UsageError(f"interval {args.interval}: expected a positive number of seconds")
    prev = datapath.stats(args.iface, args.netns)
    n = 0
    while args.count is None or n < args.count:
        time.sleep(args.interval)
        cur = datapath.stats(args.iface, args.netns)
        out(args, {**cur, "rates": rates(prev, cur)}, format_stats(cur, prev))
        prev, n = cur, n + 1


def rates(prev: dict, cur: dict) -> dict:
    dt = max(cur["time"] - prev["time"], 1e-9)
    return {group: {k: round((v - prev[group][k]) / dt, 1) for k, v in cur[group].items()}
            for group in ("classes", "input", "verdict")}


def format_stats(s: dict, prev: dict | None) -> str:
    """Totals; with a forwarding peer, also each direction (by ingress interface)."""
    r = rates(prev, s) if prev else None
    ns = f" (netns {s['netns']})" if s["netns"] else ""
    sides = s.get("ingress", {}) if len(s.get("ingress", {})) > 1 else {}
    lines = [f"{s['iface']}{ns}: {sum(s['input'].values())} packets, "
             f"{s['input']['classified']} classified"]
    head = (f"  {'class':<20}" + "".join(f"{'from ' + i:>12}" for i in sides) +
            f"{'packets':>12}" + (f"{'pkt/s':>12}" if r else ""))
    lines.append(head)
    for name, v in s["classes"].items():
        lines.append(f"  {name:<20}" + "".join(f"{d['classes'][name]:>12}" for d in sides.values())
                     + f"{v:>12}" + (f"{r['classes'][name]:>12.0f}" if r else ""))

    def counts(group, c):
        return ", ".join(f"{k} {v}" for k, v in c[group].items() if v) or "none"
    for group in ("input", "verdict"):
        lines.append(f"  {group}: {counts(group, s)}")
    for i, d in sides.items():
        lines.append(f"  from {i}: input {counts('input', d)}; verdict {counts('verdict', d)}")
    return "\n".join(lines)


def cmd_swap(args):
    from xdpnn.loader import datapath
    rec = datapath.swap(args.iface, args.netns, args.model)
    out(args, rec, f"{args.iface}: now running {rec['model']['path']} "
                   f"(sha256 {rec['model']['sha256'][:12]})")


def cmd_set(args):
    from xdpnn.loader import datapath
    if not args.action and args.port is None:
        raise UsageError("set: nothing to change: give --action and/or --port")
    rec = datapath.set_options(args.iface, args.netns, args.action, args.port)
    acts = ", ".join(f"{c}={a}" for c, a in rec["actions"].items())
    out(args, rec, f"{args.iface}: actions {acts}" +
        (f"; port {rec['port']}" if rec.get("port") else ""))


def cmd_predict(args):
    from xdpnn.loader import compile, datapath, testrun
    model = datapath.load_model(args.model)
    if args.ebpf:
        return print_ebpf(model, record_input=True)
    frames = read_frames(args)
    for i, f in enumerate(frames):
        if len(f) < 14:  # the kernel refuses to test-run less than an Ethernet header
            raise UsageError(f"frame {i}: {len(f)} bytes, shorter than an Ethernet header "
                             "(14 bytes)")
    port = args.port or model.input.get("port") or 9595
    prog = compile.build(model, record_input=True)
    rows = []
    try:
        runner = testrun.Runner(prog, port)
        for i, frame in enumerate(frames):
            k = runner.run(frame)
            ref_result, ref_cls, ref_bits = testrun.expected(model, frame, port)
            same_bits = (k.bits is None or ref_bits is None or
                         bool((k.bits == ref_bits).all())) if k.result == "classified" else True
            rows.append({"packet": i, "bytes": len(frame), "verdict": k.verdict,
                         "kernel": {"input": k.result, "class": _name(model, k.cls)},
                         "reference": {"input": ref_result, "class": _name(model, ref_cls)},
                         "match": k.result == ref_result and k.cls == ref_cls and same_bits})
    finally:
        prog.close()
    lines = [f"{'#':>4} {'bytes':>5}  {'kernel input':<14}{'kernel class':<16}"
             f"{'reference':<16}{'verdict':<9}match"]
    for r in rows:
        lines.append(f"{r['packet']:>4} {r['bytes']:>5}  {r['kernel']['input']:<14}"
                     f"{str(r['kernel']['class']):<16}{str(r['reference']['class']):<16}"
                     f"{r['verdict']:<9}{'yes' if r['match'] else 'NO'}")
    out(args, rows, "\n".join(lines))
    if not all(r["match"] for r in rows):
        raise errors.MismatchError("the kernel and the reference disagree on "
                                   f"{sum(not r['match'] for r in rows)} packet(s)")


def _name(model, cls):
    return None if cls is None else model.classes[cls]


def read_frames(args) -> list[bytes]:
    if args.hex is not None:
        try:
            return [bytes.fromhex(h.replace(":", "")) for h in args.hex]
        except ValueError as e:
            raise UsageError(f"--hex: not hexadecimal bytes ({e})") from None
    from xdpnn.traffic import packets
    try:
        frames = packets.read_pcap(args.pcap)
    except (OSError, EOFError, Exception) as e:
        raise UsageError(f"--pcap {args.pcap}: cannot read it as a pcap file ({e})") from None
    if not frames:
        raise UsageError(f"--pcap {args.pcap}: no packets in it")
    return frames


def cmd_verify(args):
    from xdpnn.loader import datapath, testrun
    from xdpnn.trainer.model import ModelError, random_model
    if args.model:
        model = datapath.load_model(args.model)
    else:
        try:
            model = random_model(parse_shape(args.shape), seed=args.seed, mode=args.input)
        except ModelError as e:
            raise errors.ModelFileError(f"shape {args.shape}: {e}") from None
    if args.ebpf:
        return print_ebpf(model)
    if not 1 <= args.samples <= 10_000_000:
        raise UsageError(f"--samples {args.samples}: expected 1..10000000")

    def progress(done, total):
        if not args.json and sys.stderr.isatty():
            print(f"\r  {done}/{total} inputs", end="", file=sys.stderr, flush=True)
    res = testrun.verify(model, args.samples, seed=args.seed, progress=progress)
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    text = (f"model {res['model']} ({res['input']}): {res['samples']} inputs, "
            f"{res['mismatches']} mismatches between kernel and reference "
            f"({res['classes_seen']} classes seen, {res['verified_insns']} instructions "
            f"verified, {res['seconds']} s)")
    for ex in res["examples"]:
        text += f"\n  input {ex['index']}: kernel {ex['kernel']}, reference {ex['reference']}"
    out(args, res, text)
    if res["mismatches"]:
        return errors.MismatchError.exit_code


def parse_shape(shape: str) -> list[int]:
    try:
        sizes = [int(s) for s in shape.split("-")]
    except ValueError:
        raise UsageError(f"shape '{shape}': expected sizes joined by '-', like 784-64-32-10") \
            from None
    return sizes


def cmd_model_random(args):
    from xdpnn.trainer.model import ModelError, random_model
    try:
        m = random_model(parse_shape(args.shape), seed=args.seed, mode=args.input,
                         port=args.port)
    except ModelError as e:
        raise errors.ModelFileError(f"shape {args.shape}: {e}") from None
    m.save(args.out)
    out(args, {"out": args.out, "shape": m.shape}, f"wrote {args.out}: random {m.shape} "
                                                    f"({m.mode}), seed {args.seed}")


def cmd_model_show(args):
    from xdpnn.loader import datapath, layout
    m = datapath.load_model(args.file)
    info = {"file": args.file, "shape": m.shape, "layers": m.sizes, "input": m.input,
            "classes": m.classes, "provenance": m.provenance,
            "weight_bytes": layout.model_words(m).nbytes}
    out(args, info, "\n".join([f"{args.file}: {m.shape}, {m.mode} input" +
                               (f" (port {m.input.get('port')})" if m.mode == "payload" else ""),
                               f"  classes: {', '.join(m.classes)}",
                               f"  map value: {info['weight_bytes']} bytes per slot",
                               f"  provenance: {json.dumps(m.provenance)}"]))


def cmd_send(args):
    import numpy as np
    from xdpnn.traffic import packets
    from xdpnn.traffic.sender import send_frames
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count {args.count}: expected at least 1")
    if args.pcap:
        frames = read_frames(args)[:args.count]
    else:
        args.count = args.count or 23
        if not 0 <= args.bytes <= 1472:
            raise UsageError(f"--bytes {args.bytes}: expected 0..1472")
        rng = np.random.default_rng(args.seed)
        frames = [packets.request(rng.integers(0, 256, args.bytes, dtype=np.uint8).tobytes(),
                                  args.port) for _ in range(args.count)]
    from xdpnn.loader.netns import ifindex, netns
    with netns(args.netns):
        ifindex(args.iface, args.netns)
    try:
        sent = send_frames(args.netns, args.iface, frames, max_seconds=args.max_seconds)
    except OSError as e:
        raise errors.XdpnnError(f"send on {args.iface}: {e.strerror or e}") from None
    out(args, {"iface": args.iface, "sent": sent, "requested": len(frames)},
        f"sent {sent} of {len(frames)} frames on {args.iface}")


EPILOGS["train"] = """examples:
  xdpnn train --data digits --out digits.npz
  xdpnn train --data digits --hidden 256,256 --epochs 100 --seed 3 --out digits.npz
  xdpnn train --data mnist:/data/mnist --hidden 256 --out mnist.npz    (IDX files, never downloaded)
  xdpnn train --data csv:flows.csv --label-column app --levels 8 --out flows.npz
  xdpnn train --data traffic --hidden 64 --out traffic.npz             (headers mode)
  xdpnn train --data pcaps:captures/ --out apps.npz                    (one pcap per class)

exit code 10: the data source cannot be read (the message names the file and the problem)"""


def cmd_train(args):
    from xdpnn.trainer import data, train
    from xdpnn.trainer.model import ModelError
    try:
        hidden = [int(h) for h in args.hidden.split(",")]
    except ValueError:
        raise UsageError(f"--hidden {args.hidden}: expected sizes like 256,256") from None
    if args.epochs < 1 or args.batch_size < 2 or not 0 < args.test_fraction < 1:
        raise UsageError("expected --epochs >= 1, --batch-size >= 2, 0 < --test-fraction < 1")
    cfg = train.Config(hidden=hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       patience=args.patience, seed=args.seed, test_fraction=args.test_fraction)
    try:
        ds = data.load(args.data, levels=args.levels, label_column=args.label_column,
                       split_seed=args.seed, test_fraction=args.test_fraction)
        model = train.train(ds, cfg, port=args.port, progress=None if args.json else print)
    except data.DataError as e:
        raise errors.DataError(str(e)) from None
    except ModelError as e:
        raise UsageError(f"{args.data}: {e}") from None
    model.save(args.out)
    report = model.provenance["report"]
    out(args, {"out": args.out, "report": report},
        f"{train.format_report(report)}\nwrote {args.out}")


EPILOGS["bench"] = """examples:
  sudo xdpnn bench                       the three default shapes, 5 trials (a few minutes)
  sudo xdpnn bench --quick               a smoke run (under a minute)
  sudo xdpnn -j bench --shape 256-32-16-2 --model model.npz --trials 7 --out results/mine

Writes bench.json, bench.md and bench.png (with matplotlib) to --out
(default results/bench-<time>/); docs/benchmarks.md explains every figure."""


EPILOGS["exporter"] = """examples:
  sudo xdpnn exporter                               every attached datapath, on 127.0.0.1:9797
  sudo xdpnn -n dut exporter d0 --listen 127.0.0.1:9800
  curl -s http://127.0.0.1:9797/metrics | grep xdpnn_class_packets

Counters are read from the pins at each scrape; Ctrl-C or SIGTERM stops it."""


def cmd_exporter(args):
    from xdpnn.loader import exporter
    return exporter.command(args)


def cmd_bench(args):
    from xdpnn.traffic import bench
    return bench.command(args)


def cmd_demo(args):
    from xdpnn.traffic import demo
    return demo.run(args)


def print_ebpf(model, record_input: bool = False):
    from xdpnn.loader import compile
    text, flags = compile.source_and_flags(model, record_input)
    print("/* cflags: " + " ".join(flags) + " */")
    print(text)


NEEDS_ROOT = {"attach", "detach", "status", "stats", "swap", "set", "predict", "verify", "send",
              "demo", "bench", "exporter"}


# --- parser -----------------------------------------------------------------

ACTION_HELP = ("what to do with packets of CLASS (name, index or 'all'): count (default: the "
               "default path), pass, drop, or redirect:IFACE (out of interface IFACE, a "
               "monitor or scrubbing port); repeatable")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xdpnn", description="Binarized neural network inference in XDP, per packet, "
                                  "beside a forwarding path.",
        epilog="Run `xdpnn COMMAND --help` for each command's options and examples.\n\n"
               "exit codes: 0 ok, 1 other error, 2 bad usage, 3 bad model file, "
               "4 BPF failure (compile, verifier, system call),\n  5 attach failure (interface, namespace, "
               "XDP), 6 kernel and reference disagree, 7 not attached\n  or already attached, "
               "8 missing kernel feature or tool, 9 needs root, 10 bad training data,\n  "
               "130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-j", "--json", action="store_true", help="print JSON (errors too)")
    p.add_argument("-n", "--netns", metavar="NAME",
                   help="work on interfaces in network namespace NAME (like `ip -n`)")
    p.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, func, help_):
        c = sub.add_parser(name, help=help_, description=help_, epilog=EPILOGS.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.set_defaults(func=func)
        return c

    c = cmd("attach", cmd_attach, "compile a model for an interface and attach it")
    c.add_argument("iface", help="interface to attach to")
    c.add_argument("--model", required=True, metavar="FILE", help="model file (.npz)")
    c.add_argument("--peer", metavar="IFACE2",
                   help="forward between IFACE and IFACE2 through a DEVMAP (bump in the wire); "
                        "without it, packets go to the local stack")
    c.add_argument("--input", choices=("payload", "headers"),
                   help="where the inputs come from (default: the model's own input mode)")
    c.add_argument("--port", type=int, help="payload mode: UDP port of requests "
                                            "(default: the model's, else 9595)")
    c.add_argument("--action", action="append", default=[], metavar="CLASS=ACTION",
                   help=ACTION_HELP)
    c.add_argument("--xdp-mode", choices=("native", "generic"), default="native",
                   help="driver XDP (default) or generic (skb) XDP")

    c = cmd("detach", cmd_detach, "detach from an interface (and its peer), remove the pins")
    c.add_argument("iface")

    cmd("status", cmd_status, "what is attached where, with which model")

    c = cmd("stats", cmd_stats, "per-class, per-input-result and per-verdict packet counts")
    c.add_argument("iface")
    c.add_argument("interval", nargs="?", type=float, help="seconds between samples")
    c.add_argument("count", nargs="?", type=int, help="number of samples (default: until Ctrl-C)")

    c = cmd("swap", cmd_swap, "replace the model with another of the same shape, in place")
    c.add_argument("iface")
    c.add_argument("--model", required=True, metavar="FILE")

    c = cmd("set", cmd_set, "change per-class actions or the request port")
    c.add_argument("iface")
    c.add_argument("--action", action="append", default=[], metavar="CLASS=ACTION",
                   help=ACTION_HELP)
    c.add_argument("--port", type=int)

    c = cmd("predict", cmd_predict, "run packets through the compiled program (no interface) "
                                    "and print the kernel's class beside the reference's")
    c.add_argument("--model", required=True, metavar="FILE")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcap", metavar="FILE", help="packets from a pcap file")
    src.add_argument("--hex", nargs="+", metavar="BYTES", help="frames as hex strings")
    c.add_argument("--port", type=int, help="request port (default: the model's)")

    c = cmd("verify", cmd_verify, "random inputs through the kernel and the reference; "
                                  "exit code 6 on any mismatch")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="FILE")
    src.add_argument("--shape", metavar="SHAPE", help="a random model of this shape, "
                                                      "like 784-64-32-10")
    c.add_argument("--input", choices=("payload", "headers"), default="payload",
                   help="input mode of a --shape model")
    c.add_argument("--samples", type=int, default=10000, help="number of inputs (10000)")
    c.add_argument("--seed", type=int, default=0)

    c = cmd("model", None, "make or inspect model files")
    msub = c.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    r = msub.add_parser("random", help="write a model with random weights (tests, benchmarks)")
    r.set_defaults(func=cmd_model_random)
    r.add_argument("shape", help="layer sizes, like 784-64-32-10")
    r.add_argument("--out", required=True, metavar="FILE")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--input", choices=("payload", "headers"), default="payload")
    r.add_argument("--port", type=int, default=9595)
    s = msub.add_parser("show", help="print a model file's shape, classes and provenance")
    s.set_defaults(func=cmd_model_show)
    s.add_argument("file")

    c = cmd("send", cmd_send, "send requests with random inputs, or a pcap's frames, from an "
                              "interface (low rate, bounded)")
    c.add_argument("iface")
    c.add_argument("--count", type=int, help="frames to send (23; with --pcap, all of them)")
    c.add_argument("--bytes", type=int, default=32, help="request payload bytes (32: 256 inputs)")
    c.add_argument("--port", type=int, default=9595, help="request UDP port (9595)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    c.add_argument("--pcap", metavar="FILE", help="send this file's frames instead")
    c.add_argument("--max-seconds", type=float, default=30.0, help="stop after this long (30)")
    c.set_defaults(hex=None)

    c = cmd("train", cmd_train, "train a binarized network on labeled data and export it to a "
                                "model file, with a report (no root needed)")
    c.add_argument("--data", default="digits", metavar="SOURCE",
                   help="digits (default), mnist:DIR, csv:FILE, traffic or pcaps:DIR; "
                        "docs/training.md")
    c.add_argument("--hidden", default="128", metavar="SIZES",
                   help="hidden layer sizes, comma separated (128)")
    c.add_argument("--out", required=True, metavar="FILE", help="model file to write")
    c.add_argument("--epochs", type=int, default=60, help="most epochs (60; early stopping)")
    c.add_argument("--patience", type=int, default=12,
                   help="stop after this many epochs without a better validation accuracy (12)")
    c.add_argument("--batch-size", type=int, default=64, help="mini-batch size (64)")
    c.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (0.01)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the initialization and the batch order (0)")
    c.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of each class held out for the test (0.25)")
    c.add_argument("--levels", type=int,
                   help="thermometer bits per value: digits 1..4 (4), csv (4)")
    c.add_argument("--label-column", metavar="NAME", help="csv: the label column (the last)")
    c.add_argument("--port", type=int, default=9595,
                   help="payload models: UDP port of requests (9595)")

    c = cmd("exporter", cmd_exporter, "serve the counters of attached datapaths as Prometheus "
                                      "metrics over HTTP")
    c.add_argument("iface", nargs="*", help="datapaths to export, by interface (in -n NETNS); "
                                            "default: every attached one")
    c.add_argument("--listen", metavar="ADDR:PORT",
                   help="where to serve /metrics (127.0.0.1:9797)")

    c = cmd("bench", cmd_bench, "measure the forwarding rate with and without inference, "
                                "ns per inference in XDP and in user space (namespaces of "
                                "its own)")
    c.add_argument("--quick", action="store_true", help="short trials: a smoke run")
    c.add_argument("--shape", action="append", metavar="SHAPE",
                   help="a random model of this shape (repeatable; default 256-32-16-2, "
                        "784-64-32-10, 784-256-256-10)")
    c.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="also measure this model file (repeatable)")
    c.add_argument("--trials", type=int, help="trials per figure (5)")
    c.add_argument("--seconds", type=float, help="seconds per datapath per rate trial "
                                                 "(1, --quick 0.2)")
    c.add_argument("--napi", choices=("softirq", "threaded"), default="softirq",
                   help="veth NAPI in softirq (default) or in kernel threads")
    c.add_argument("--out", metavar="DIR", help="results directory (results/bench-<time>)")

    c = cmd("demo", cmd_demo, "build namespaces, attach a model, send traffic, show counts, "
                              "clean up")
    c.add_argument("--packets", type=int,
                   help="test samples to send (default: the model's whole test split)")
    c.add_argument("--model", metavar="FILE", help="a model made by `xdpnn train` in payload "
                                                   "mode (default: models/digits-default.npz)")
    return p


if __name__ == "__main__":
    sys.exit(main())
