"""`xdpnn COMMAND`: the command line.

Each command is declared once, by the @command decorator on the function
that runs it: its help, its examples, whether it needs root, and its
options.  docs/commands.md is their manual.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from xdpnn.loader import errors
from xdpnn.loader.errors import UsageError, XdpnnError
from xdpnn.loader.netns import check_ifname, check_netns_name
from xdpnn.trainer.model import DEFAULT_PORT


# --- option types: every value from a user is checked before it is used ------

_BAD_VALUE = "\0"  # marks a type error for Parser.error, which puts the option first


def _typed(parse: Callable, expected: str):
    """An argparse type: parse(text), or the error '--option TEXT: expected ...'."""
    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, UsageError, OverflowError):
            shown = text if text.isprintable() and text and " " not in text else repr(text)
            raise argparse.ArgumentTypeError(f"{_BAD_VALUE}{shown}: expected {expected}") \
                from None
    convert.__name__ = expected  # what argparse shows if it ever names the type
    return convert


def int_in(lo: int, hi: int):
    def parse(text):
        value = int(text, 10)
        if not lo <= value <= hi:
            raise ValueError
        return value
    return _typed(parse, f"an integer {lo}..{hi}")


def float_in(lo: float, hi: float, lo_open: bool = True):
    def parse(text):
        value = float(text)
        if not (math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi):
            raise ValueError
        return value
    return _typed(parse, f"a number {lo}{'<' if lo_open else '<='}x<={hi:g}")


def _shape(text: str) -> str:
    if not re.fullmatch(r"[0-9]+(-[0-9]+)*", text):
        raise ValueError
    return text


PORT = int_in(1, 65535)
SEED = int_in(0, 2**32 - 1)
SECONDS = float_in(0, 86400)
IFNAME = _typed(check_ifname, "an interface name (1..15 bytes, no '/', ':', '@' or spaces)")
NETNS = _typed(check_netns_name, "a network namespace name (no '/', not '.' or '..')")
SHAPE = _typed(_shape, "sizes joined by '-', like 784-64-32-10")


def _cpu_list(text: str) -> list[int]:
    if not re.fullmatch(r"[0-9]{1,4}(,[0-9]{1,4})*", text):
        raise ValueError
    cpus = [int(c) for c in text.split(",")]
    if len(set(cpus)) != len(cpus):
        raise ValueError
    return cpus


CPU_LIST = _typed(_cpu_list, "CPU numbers joined by ',', each once, like 1 or 1,2")
MODEL_ID = int_in(0, 65535)  # a request's; the command checks it against the ids it serves
ADDRESS = _typed(lambda t: str(ipaddress.ip_address(t)), "an IPv4 or IPv6 address")


def shape_sizes(shape: str) -> list[int]:
    return [int(s) for s in shape.split("-")]


# --- the command table -----------------------------------------------------------

def arg(*flags, **kw):
    return (flags, kw)


def one_of(*args, required=True):
    """Mutually exclusive options."""
    return ("group", required, args)


@dataclass
class Command:
    name: str               # "model show" for a subcommand
    func: Callable
    help: str
    examples: str
    root: bool
    options: list = field(default_factory=list)


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, examples: str, root: bool = True, options=()):
    def register(func):
        COMMANDS[name] = Command(name, func, help, examples, root, list(options))
        return func
    return register


# --- running a command ---------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    json_wanted = any(a in ("-j", "--json") for a in argv)
    name = "xdpnn"
    # SIGTERM unwinds like Ctrl-C, so every command's cleanup runs.
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = build_parser().parse_args(argv)
        name = args.command_name
        if COMMANDS[name].root and os.geteuid() != 0:
            raise errors.PrivilegeError("needs root (BPF and network administration): run it "
                                        "with sudo")
        code = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except SystemExit as e:  # --help and --version
        return e.code or 0
    except XdpnnError as e:
        return report_error(json_wanted, name, str(e), e.exit_code)
    except KeyboardInterrupt:
        return report_error(json_wanted, name, "interrupted", errors.INTERRUPTED)
    except BrokenPipeError:
        # Whoever read the output stopped (`| head`): end quietly, and keep
        # Python's final flush from failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return errors.PIPE_CLOSED
    except OSError as e:  # a file, socket or command the step needed
        return report_error(json_wanted, name, str(e), 1)
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("XDPNN_DEBUG"):
            raise
        return report_error(json_wanted, name, f"internal error: {type(e).__name__}: {e}",
                            errors.InternalError.exit_code)
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run() -> None:
    """The `xdpnn` program: main()'s code as the exit status.

    After Ctrl-C, the exit is immediate (cleanup has run): CPython 3.11
    remembers a KeyboardInterrupt that landed inside an exec() or eval() of
    a string (namedtuple and dataclass definitions, imports) even when it
    was caught, and would end the process by SIGINT instead of exit 130."""
    code = main()
    if code == errors.INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def report_error(json_wanted: bool, name: str, message: str, code: int) -> int:
    if name != "xdpnn" and not message.startswith(f"{name}:"):
        message = f"{name}: {message}"  # the command, "model add" for a subcommand
    if json_wanted:
        print(json.dumps({"error": message, "exit_code": code}))
    else:
        print(f"xdpnn: {message}", file=sys.stderr)
    return code


def out(args, data, text: str) -> None:
    print(json.dumps(data, indent=None if args.command_name == "stats" else 1)
          if args.json else text)


# --- commands ------------------------------------------------------------------

ACTION_HELP = ("what to do with packets of CLASS (name, index or 'all'): count (default: the "
               "default path), pass, drop, or redirect:IFACE (out of interface IFACE, a "
               "monitor or scrubbing port); repeatable")


@command("attach", "compile a model for an interface and attach it", """
  sudo xdpnn attach veth0 --model model.npz
  sudo xdpnn -n dut attach d0 --model model.npz --peer d1 --action attack=drop
  sudo xdpnn -n dut attach d0 --model model.npz --peer d1 --action attack=redirect:mon0
  sudo xdpnn attach eth1 --model flows.npz --input headers --xdp-mode generic
  sudo xdpnn -n srv attach s0 --model model.npz --serve
  sudo xdpnn attach veth0 --model lfc.npz --plan lfc-plan.json
  sudo xdpnn -n srv attach s0 --model lfc.npz --serve     stages; the last one replies
  sudo xdpnn attach veth0 --model m.npz --plan p2.json --cpus 1   stage 1 on CPU 1
  sudo xdpnn -n hop1 attach b0 --model lfc.npz --plan lfc-plan.json --stage 1 --peer b1
                                      one hop: stage 1 alone, on to the next hop out of b1""",
         options=[
    arg("iface", type=IFNAME, help="interface to attach to"),
    arg("--model", required=True, metavar="FILE", help="model file (.npz)"),
    arg("--peer", type=IFNAME, metavar="IFACE2",
        help="forward between IFACE and IFACE2 through a DEVMAP (bump in the wire); without "
             "it, packets go to the local stack"),
    arg("--input", choices=("payload", "headers"),
        help="where the inputs come from (default: the model's own input mode)"),
    arg("--port", type=PORT, help=f"payload mode: UDP port of requests (default: the model's, "
                                  f"else {DEFAULT_PORT})"),
    arg("--action", action="append", default=[], metavar="CLASS=ACTION", help=ACTION_HELP),
    arg("--xdp-mode", choices=("native", "generic"), default="native",
        help="driver XDP (default) or generic (skb) XDP"),
    arg("--serve", action="store_true",
        help="payload mode: answer requests with a header (docs/serving.md) from XDP, "
             "XDP_TX, over IPv4 and IPv6, staged models too (not with --cpus); see "
             "`xdpnn query`"),
    arg("--plan", metavar="PLAN.json",
        help="run the model as the tail-call stages of this plan (`xdpnn plan --out`); "
             "without it, a model over one program's verifier budget is cut automatically "
             "(docs/partitioning.md)"),
    arg("--cpus", type=CPU_LIST, metavar="C1[,C2...]",
        help="run stages 1, 2, ... on these CPUs, one each, chained by CPUMAP with the "
             "activations in the packet; stage 0 runs on the CPU that receives the frame "
             "(docs/partitioning.md, 'CPUMAP chaining')"),
    arg("--stage", type=int_in(0, 4), metavar="S",
        help="attach only stage S of --plan: one hop of a chain across interfaces; it "
             "sends the activations on the wire out of --peer to stage S+1 (the last "
             "stage gives the class; docs/partitioning.md, 'Hop chaining')"),
])
def cmd_attach(args):
    from xdpnn.loader import datapath
    if args.ebpf:
        return print_ebpf(datapath.load_model(args.model))
    rec = datapath.attach(args.iface, args.model, peer=args.peer, input_mode=args.input,
                          port=args.port, actions=args.action, xdp_mode=args.xdp_mode,
                          ns=args.netns, serve=args.serve, plan_path=args.plan,
                          cpus=args.cpus, stage=args.stage)
    where = f" (netns {args.netns})" if args.netns else ""
    peer = f", forwarding to {args.peer}" if args.peer else ""
    port = f" port {rec['port']}" if rec["port"] else ""
    port += ", serving" if rec["serve"] else ""
    port += f", {len(rec['stages'])} stages" if rec.get("stages") else ""
    if rec.get("stage") is not None:
        port = f"{port[:-1]}{rec['stage']} of {len(rec['stages'])}"  # ", stage S of N"
    out(args, rec, f"attached {rec['model']['shape']} ({rec['input']}{port}) to "
                   f"{args.iface}{where}{peer}, {args.xdp_mode} mode")


@command("detach", "detach from an interface (and its peer), remove the pins", """
  sudo xdpnn detach veth0
  sudo xdpnn -n dut detach d0""", options=[arg("iface", type=IFNAME)])
def cmd_detach(args):
    from xdpnn.loader import datapath
    rep = datapath.detach(args.iface, args.netns)
    lines = [f"detached from {', '.join(rep['detached']) or 'nothing'}; pins removed"]
    lines += [f"  skipped {s}" for s in rep["skipped"]]
    out(args, rep, "\n".join(lines))


@command("status", "what is attached where, with which model", """
  sudo xdpnn status
  sudo xdpnn status -j""")
def cmd_status(args):
    from xdpnn.loader import datapath, stages
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
        port += ", serving requests" if r.get("serve") else ""
        acts = ", ".join(f"{c}={a}" for c, a in r["actions"].items() if a != "count")
        lines.append(f"{r['iface']}{peer}{ns}: {r['state']}, {r['xdp_mode']} mode, prog id "
                     f"{r['prog_id']}\n  model {r['model']['shape']} {r['model']['path']} "
                     f"(sha256 {r['model']['sha256'][:12]}, model map {r['model_map_id']})\n"
                     f"  input {r['input']}{port}; actions: {acts or 'count all'}")
        for k, m in r.get("models", {}).items():
            by_port = ""
            if m.get("port"):
                acts = ", ".join(f"{c}={a}" for c, a in m["actions"].items() if a != "count")
                by_port = f"\n    packets to port {m['port']}; actions: {acts or 'count all'}"
            lines.append(f"  model {k}: {m['shape']} {m['path']} (sha256 {m['sha256'][:12]}, "
                         f"prog id {m['prog_id']}, model map {m['model_map_id']}){by_port}")
        if r.get("stage") is not None:
            nxt = ("gives the class" if r["stage"] == len(r["stages"]) - 1
                   else f"on the wire to stage {r['stage'] + 1} out of {r['peer']}")
            lines.append(f"  hop: stage {r['stage']} of {len(r['stages'])} "
                         f"({stages.describe([r['stages'][r['stage']]])}), {nxt}")
        elif r.get("stages"):
            how = (f"CPUMAP, stages 1.. on CPUs {','.join(map(str, r['cpus']))}"
                   if r.get("cpus") else "tail calls")
            lines.append(f"  {len(r['stages'])} stages ({how}): {stages.describe(r['stages'])}")
    out(args, recs, "\n".join(lines))


@command("stats", "per-class, per-input-result and per-verdict packet counts", """
  sudo xdpnn stats veth0          totals since attach
  sudo xdpnn stats veth0 1        every second, with rates, until Ctrl-C
  sudo xdpnn stats veth0 1 5 -j   five samples as JSON lines""", options=[
    arg("iface", type=IFNAME),
    arg("interval", nargs="?", type=SECONDS, help="seconds between samples"),
    arg("count", nargs="?", type=int_in(1, 10**9),
        help="number of samples (default: until Ctrl-C)"),
])
def cmd_stats(args):
    from xdpnn.loader import datapath
    if args.interval is None:
        s = datapath.stats(args.iface, args.netns)
        return out(args, s, format_stats(s, None))
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
    from xdpnn.loader import stages
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
    if "flows" in s:
        f = s["flows"]
        lines.append("  flows: " + ", ".join(f"{k} {v}" for k, v in f["events"].items())
                     + "; by class: " + (", ".join(f"{k} {v}" for k, v in f["classes"].items()
                                                   if v) or "none"))
        if "table" in f:
            t = f["table"]
            lines.append(f"  flow table: {t['entries']} of {t['capacity']} entries ("
                         + ", ".join(f"{k} {v}" for k, v in t["states"].items())
                         + f"), {t['evicted']} evicted; live by class: "
                         + (", ".join(f"{k} {v}" for k, v in t["classes"].items() if v) or "none"))
    for name, e in s.get("serve", {}).items():
        status = ", ".join(f"{k} {v}" for k, v in e["status"].items() if v) or "none"
        lines.append(f"  serve {name}: {e['requests']} requests, {e['replies']} replies; "
                     f"status: {status}")
    for k, m in s.get("models", {}).items():
        classes = ", ".join(f"{c} {v}" for c, v in m["classes"].items() if v) or "none"
        verdicts = ", ".join(f"{c} {v}" for c, v in m["verdict"].items() if v) or "none"
        lines.append(f"  model {k} ({m['shape']}) classes: {classes}; verdict: {verdicts}")
    if "stages" in s:
        st = s["stages"]
        shown = stages.describe(st["layers"])
        if "stage" in st:  # a hop: this stage only
            shown = (f"hop stage {st['stage']} of {len(st['layers'])}, "
                     f"{stages.describe([st['layers'][st['stage']]])}")
        lines.append(f"  stages: {shown}; refused: " + ", ".join(f"{k} {v}" for k, v in st["errors"].items()))
    return "\n".join(lines)


@command("flows", "the flow table of a flow-mode datapath: each flow's ends, packets, state "
         "and class, most recent first", """
  sudo xdpnn flows veth0               the 20 most recent flows
  sudo xdpnn flows veth0 --limit 0 -j  every flow, as JSON""", options=[
    arg("iface", type=IFNAME),
    arg("--limit", type=int_in(0, 10**7), default=20, help="flows to show, 0 for all (20)"),
])
def cmd_flows(args):
    from xdpnn.loader import datapath
    rep = datapath.flows(args.iface, args.netns, args.limit or None)
    protos = {1: "icmp", 6: "tcp", 17: "udp"}
    lines = [f"{rep['iface']}: {rep['entries']} of {rep['capacity']} flow entries"
             + (f", the {len(rep['flows'])} most recent:" if rep["flows"] else "")]
    if rep["flows"]:
        lines.append(f"  {'proto':<6}{'initiator':<22}{'responder':<22}{'pkts':>5}  "
                     f"{'state':<9}{'class':<12}{'idle s':>8}")
    for f in rep["flows"]:
        lines.append(f"  {protos.get(f['proto'], f['proto']):<6}"
                     f"{f['initiator'][0] + ':' + str(f['initiator'][1]):<22}"
                     f"{f['responder'][0] + ':' + str(f['responder'][1]):<22}{f['packets']:>5}  "
                     f"{f['state']:<9}{f['class'] or '-':<12}{f['idle_s']:>8.1f}")
    out(args, rep, "\n".join(lines))


@command("swap", "replace a model with another of the same shape, in place", """
  sudo xdpnn swap veth0 --model retrained.npz
  sudo xdpnn -n srv swap s0 --model digits-v2.npz --id 1      an added model
  sudo xdpnn swap veth0 --model dns-v2.npz --id 2             by port, actions by class""", options=[
    arg("iface", type=IFNAME),
    arg("--model", required=True, metavar="FILE"),
    arg("--id", type=MODEL_ID, default=0,
        help="the model id to replace: an added model (`model add`), served or chosen by "
             "port; 0, the attached model, by default"),
])
def cmd_swap(args):
    from xdpnn.loader import datapath
    rec = datapath.swap(args.iface, args.netns, args.model, args.id)
    m = rec["models"][str(args.id)] if args.id else rec["model"]
    out(args, rec, f"{args.iface}: now running {m['path']} (sha256 {m['sha256'][:12]})"
                   + (f" as model {args.id}" if args.id else ""))


@command("set", "change per-class actions or the request port", """
  sudo xdpnn set veth0 --action attack=drop --action benign=count
  sudo xdpnn set veth0 --action all=count --port 9696
  sudo xdpnn set veth0 --action attack=redirect:mon0""", options=[
    arg("iface", type=IFNAME),
    arg("--action", action="append", default=[], metavar="CLASS=ACTION", help=ACTION_HELP),
    arg("--port", type=PORT, help="payload mode: the new request port"),
])
def cmd_set(args):
    from xdpnn.loader import datapath
    if not args.action and args.port is None:
        raise UsageError("nothing to change: give --action and/or --port")
    rec = datapath.set_options(args.iface, args.netns, args.action, args.port)
    acts = ", ".join(f"{c}={a}" for c, a in rec["actions"].items())
    out(args, rec, f"{args.iface}: actions {acts}" +
        (f"; port {rec['port']}" if rec.get("port") else ""))


@command("predict", "run packets through the compiled program (no interface) and print the "
                    "kernel's class beside the reference's", """
  sudo xdpnn predict --model model.npz --pcap requests.pcap
  sudo xdpnn predict --model model.npz --hex 020000000002020000000001080045... -j
  sudo xdpnn predict --model lfc.npz --pcap requests.pcap      through its tail-call stages""",
    options=[
    arg("--model", required=True, metavar="FILE"),
    one_of(arg("--pcap", metavar="FILE", help="packets from a pcap file"),
           arg("--hex", nargs="+", metavar="BYTES", help="frames as hex strings")),
    arg("--port", type=PORT, help="request port (default: the model's)"),
])
def cmd_predict(args):
    from xdpnn.loader import datapath, stages, testrun
    model = datapath.load_model(args.model)
    if args.ebpf:
        return print_ebpf(model, record_input=True)
    no_flow_models(model, args.model)
    frames = read_frames(args)
    for i, f in enumerate(frames):
        if len(f) < 14:  # the kernel refuses to test-run less than an Ethernet header
            raise UsageError(f"frame {i}: {len(f)} bytes, shorter than an Ethernet header "
                             "(14 bytes)")
        if len(f) > testrun.MAX_FRAME:
            raise UsageError(f"frame {i}: {len(f)} bytes; predict runs frames of up to "
                             f"{testrun.MAX_FRAME} bytes (one page of BPF_PROG_TEST_RUN)")
    port = args.port or model.input.get("port") or DEFAULT_PORT
    prog = testrun.build(model, record_input=True)  # stages too, where attach would stage it
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
    if getattr(prog, "cuts", None):
        lines.append(f"(the model ran as {len(prog.cuts)} tail-call stages: "
                     f"{stages.describe(prog.cuts)})")
    out(args, rows, "\n".join(lines))
    if not all(r["match"] for r in rows):
        raise errors.MismatchError("the kernel and the reference disagree on "
                                   f"{sum(not r['match'] for r in rows)} packet(s)")


def no_flow_models(model, path) -> None:
    """A flow model's class depends on the packets before: per-frame checks
    do not apply; evaluate replays whole captures against the flow twin."""
    if model.mode == "flow":
        raise UsageError(f"{path}: a flow-mode model; use `xdpnn evaluate --model {path} "
                         "--pcaps DIR`, which replays captures against the flow twin")


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
    except Exception as e:  # scapy raises many kinds for a file that is not a pcap
        raise UsageError(f"--pcap {args.pcap}: cannot read it as a pcap file ({e})") from None
    if not frames:
        raise UsageError(f"--pcap {args.pcap}: no packets in it")
    return frames


@command("evaluate", "a model's per-packet and per-flow accuracy on labeled captures, as the "
                     "kernel classifies them", """
  sudo xdpnn evaluate --model traffic.npz --pcaps captures/
  sudo xdpnn evaluate --model traffic.npz --pcaps captures/ -j

DIR holds one pcap per class, named after it (dns.pcap, ...), as `xdpnn
capture` writes them.  A flow (both directions of a 5-tuple) takes the
majority of its packets' classes.  Exit code 6 if the kernel and the Python
reference disagree on any frame.""", options=[
    arg("--model", required=True, metavar="FILE"),
    arg("--pcaps", required=True, metavar="DIR", help="one pcap per class, file name = class"),
])
def cmd_evaluate(args):
    from xdpnn.loader import datapath, evaluate
    model = datapath.load_model(args.model)
    captures = evaluate.read_captures(args.pcaps, model.classes)

    def progress(done):
        if not args.json and sys.stderr.isatty():
            print(f"\r  {done} frames", end="", file=sys.stderr, flush=True)
    rep = evaluate.evaluate(model, captures, progress)
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    out(args, rep, evaluate.format_report(rep))
    if rep["reference_mismatches"]:
        return errors.MismatchError.exit_code


@command("capture", "record labeled pcaps of real servers and clients (DNS, NTP, HTTP, TLS, "
                    "SSH, QUIC, other) in namespaces of its own", """
  sudo xdpnn capture --out captures/                    20 flows per class, at most 60 s
  sudo xdpnn capture --out unseen/ --seed 7 --seconds 30 --flows 10
  sudo xdpnn capture --out dns-only/ --classes dns,other --seconds 5 -j

Writes DIR/<class>.pcap.  Servers listen on 198.18.0.2 in the namespace
<prefix>-srv only; clients run in <prefix>-cli; both are deleted on exit
(Ctrl-C included), with every process the command started.""", options=[
    arg("--out", required=True, metavar="DIR", help="where to write <class>.pcap"),
    arg("--seed", type=SEED, default=0, help="seed of the client commands and options (0)"),
    arg("--seconds", type=float_in(0, 3600), default=60.0,
        help="stop starting clients after this long (60)"),
    arg("--flows", type=int_in(1, 10_000), default=20,
        help="client commands per class (20); each makes one or more flows"),
    arg("--classes", metavar="LIST",
        type=_typed(lambda t: t.split(","), "class names joined by ','"),
        help="some of dns,ntp,http,tls,ssh,quic,other (all)"),
    arg("--max-frames", type=int_in(1, 10**7), default=200_000,
        help="stop recording after this many frames (200000)"),
    arg("--prefix", type=NETNS, metavar="NAME",
        help="namespace name prefix (flowcap-<pid>)"),
])
def cmd_capture(args):
    from xdpnn.traffic import capture
    progress = (None if args.json or not sys.stderr.isatty()
                else lambda text: print("  " + text, file=sys.stderr, flush=True))
    res = capture.run(args.out, seed=args.seed, seconds=args.seconds, classes=args.classes,
                      prefix=args.prefix, flows=args.flows, max_frames=args.max_frames,
                      progress=progress)
    rep = vars(res)
    lines = [f"captured {sum(c.get('frames', 0) for c in res.classes.values())} frames in "
             f"{res.seconds} s (seed {res.seed}) into {res.out}/",
             f"  {'class':<8}{'clients':>8}{'failed':>8}{'flows':>8}{'frames':>9}"]
    for c, v in res.classes.items():
        lines.append(f"  {c:<8}{v['jobs']:>8}{v['failed']:>8}{v.get('flows', 0):>8}"
                     f"{v.get('frames', 0):>9}")
    lines.append(f"  frames of no service (left out): {res.unlabeled}; lost by the capture "
                 f"socket: {res.dropped}")
    lines += [f"  note: {n}" for n in res.notes]
    out(args, rep, "\n".join(lines))


INPUT_BITS_OPTIONS = (
    arg("--input-bits", type=int_in(1, 8), default=1, metavar="K",
        help="bits per input: 1 (binary, default), or 2..8 for one k-bit value per input "
             "byte (docs/model-format.md, \"Multi-bit inputs\")"),
    arg("--signed", action="store_true",
        help="with --input-bits 2..8: the values are k-bit two's complement"),
)


@command("verify", "random inputs through the kernel and the reference; exit code 6 on any "
                   "mismatch", """
  sudo xdpnn verify --model model.npz --samples 10000
  sudo xdpnn verify --shape 784-256-256-10 --samples 10000 --seed 7
  sudo xdpnn verify --shape 784-1024-1024-1024-10 --samples 2000     as stages
  sudo xdpnn verify --model lfc.npz --plan lfc-plan.json
  sudo xdpnn verify --shape 64-128-10 --input-bits 8 --signed --samples 5000""", options=[
    one_of(arg("--model", metavar="FILE"),
           arg("--shape", type=SHAPE, help="a random model of this shape, like 784-64-32-10")),
    arg("--input", choices=("payload", "headers"), default="payload",
        help="input mode of a --shape model"),
    *INPUT_BITS_OPTIONS,
    arg("--samples", type=int_in(1, 10_000_000), default=10000,
        help="number of inputs (10000)"),
    arg("--seed", type=SEED, default=0),
    arg("--graph", metavar="ONNX",
        help="compare with the framework running this (Q)ONNX graph (or Larq .h5/.keras "
             "model) instead of the reference: the file `xdpnn import` read"),
    arg("--plan", metavar="PLAN.json",
        help="run the model as the tail-call stages of this plan (`xdpnn plan --out`); "
             "without it, a model over one program's verifier budget is cut automatically"),
])
def cmd_verify(args):
    from xdpnn.loader import datapath, testrun
    model = (datapath.load_model(args.model) if args.model is not None
             else random_model_or_error(args.shape, args.seed, args.input, DEFAULT_PORT,
                                        args.input_bits, args.signed))
    if args.ebpf:
        return print_ebpf(model)
    no_flow_models(model, args.model)
    oracle, against = None, "reference"
    if args.graph is not None:
        n, classes_of = _graph_step(lambda: framework(args.graph))
        if n != model.sizes[0]:
            raise UsageError(f"--graph {args.graph}: {n} inputs, the model has "
                             f"{model.sizes[0]}")
        oracle, against = (lambda bits: _graph_step(lambda: classes_of(bits))), "graph"

    def progress(done, total):
        if not args.json and sys.stderr.isatty():
            print(f"\r  {done}/{total} inputs", end="", file=sys.stderr, flush=True)
    from xdpnn.loader import plan, stages
    cuts = plan.load(args.plan, model) if args.plan else plan.auto_cuts(model)
    res = testrun.verify(model, args.samples, seed=args.seed, progress=progress, oracle=oracle,
                         cuts=cuts if cuts and len(cuts) > 1 else None)
    res["against"] = against
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    text = (f"model {res['model']} ({res['input']}{input_values(model)}): "
            f"{res['samples']} inputs, "
            f"{res['mismatches']} mismatches between kernel and {against} "
            f"({res['classes_seen']} classes seen, {res['verified_insns']} instructions "
            f"verified, {res['seconds']} s)")
    if res.get("stages"):
        text += "\n  stages: " + " | ".join(f"{stages.describe([s['layers']])} "
                                           f"({s['verified_insns']} insns)" for s in res["stages"])
    for ex in res["examples"]:
        text += f"\n  input {ex['index']}: kernel {ex['kernel']}, {against} {ex['reference']}"
    out(args, res, text)
    if res["mismatches"]:
        return errors.MismatchError.exit_code


def random_model_or_error(shape: str, seed: int, mode: str, port: int = DEFAULT_PORT,
                          input_bits: int = 1, signed: bool = False):
    from xdpnn.trainer.model import ModelError, random_model
    try:
        return random_model(shape_sizes(shape), seed=seed, mode=mode, port=port,
                            input_bits=input_bits, signed=signed)
    except ModelError as e:
        raise errors.ModelFileError(f"shape {shape}: {e}") from None


@command("plan", "cut a model into stages for the fastest slowest stage (docs/partitioning.md)", """
  xdpnn plan --model lfc.npz --stages 3
  xdpnn plan --model lfc.npz --stages 3 --out lfc-plan.json
  sudo xdpnn plan --model lfc.npz --stages 4 --measure -j      layer costs from test runs
  xdpnn plan --model m.npz --stages 2 --split           cuts may fall inside a layer
  xdpnn plan --model lfc.npz --stages 3 --out lfc-plan.json \\
      --hop hop0:a0:a1 --hop hop1:b0:b1 --hop hop2:c0:c1       a hop per stage (then deploy)
  xdpnn plan --model m.npz --stages 2 --at :veth0 --cpus 1 --out p.json
                                                     one interface, stage 1 on CPU 1""",
         root=False, options=[
    arg("--model", required=True, metavar="FILE"),
    arg("--stages", type=int_in(1, 16), required=True, metavar="N",
        help="number of stages, at most one per layer (with --split, per 64 neurons)"),
    arg("--split", action="store_true",
        help="let cuts fall inside a hidden layer, between groups of 64 neurons (a stage "
             "that ends inside a layer hands on its input and the neurons done)"),
    arg("--measure", action="store_true",
        help="time each layer with test runs (root, compiles one stage per layer) instead "
             "of predicting it from the cost model"),
    arg("--mtu", type=int_in(68, 65535), default=1500,
        help="check that the activations between stages fit a packet of this MTU (1500)"),
    arg("--out", metavar="PLAN.json", help="write the plan, for attach and verify --plan"),
    one_of(arg("--hop", action="append", metavar="NS:IFACE[:PEER]",
               help="where a stage runs, once per stage in order: on IFACE in network "
                    "namespace NS (empty: this one), sending on out of PEER (every stage "
                    "but the last needs one); for `xdpnn deploy`"),
           arg("--at", metavar="NS:IFACE[:PEER]",
               help="run every stage on IFACE (tail calls, or CPUMAP with --cpus), "
                    "forwarding to PEER; for `xdpnn deploy`"), required=False),
    arg("--cpus", type=CPU_LIST, metavar="C1[,C2...]",
        help="with --at: stages 1, 2, ... on these CPUs (as `attach --cpus`)"),
])
def cmd_plan(args):
    from xdpnn.loader import datapath, deploy, plan, stages
    model = datapath.load_model(args.model)
    if args.measure and os.geteuid() != 0:
        raise errors.PrivilegeError("plan --measure: test runs need root (sudo)")
    n_units = len(plan.units(model.sizes, *plan.predicted_layers(model.sizes), args.split)[0])
    if args.stages > n_units:
        raise UsageError(f"--stages {args.stages}: model {model.shape} has {n_units} "
                         + ("groups of 64 neurons and layers" if args.split else "layers")
                         + ", at most one stage each")
    p = plan.make(model, args.model, args.stages, measured=args.measure, mtu=args.mtu,
                  split=args.split, carry="hops" if args.hop else "cpumap" if args.cpus else None)
    plan.place(p, args.hop, args.at, args.cpus)
    if args.out:
        plan.save(p, args.out)
    lines = [f"plan for {model.shape}: {args.stages} stages, {p['costs']} costs"]
    for r in p["stages"]:
        act = (f", {r['activation_bytes']} bytes to the next" + ("" if r["fits_mtu"] else
                                                                 f" (over MTU {args.mtu})")
               if r["activation_bytes"] else "")
        at = f", at {deploy.where(r)}" if "iface" in r else ""
        lines.append(f"  stage {r['stage']}: {stages.describe([plan.row_cut(r)])}, "
                     f"{r['ns']:.0f} ns, "
                     f"{r['verified_insns']:,} predicted insns{act}{at}")
    t = p["throughput_pps"]
    lines.append(f"  slowest stage {p['slowest_ns']:.0f} ns: {t['pipelined']:,} packets/s with a "
                 f"CPU per stage, {t['one_cpu']:,} on one CPU (forwarding and CPUMAP hand-offs "
                 f"included; the layers alone {t['compute_only']['pipelined']:,} and "
                 f"{t['compute_only']['one_cpu']:,})")
    if p.get("placement", {}).get("chain") in ("tailcalls", "cpumap"):
        w = p["placement"]
        cpus = f", stages 1.. on CPUs {','.join(map(str, w['cpus']))}" if w.get("cpus") else ""
        lines.append(f"  all stages at {deploy.where(w)} ({w['chain']}{cpus})")
    if args.out:
        lines.append(f"  wrote {args.out}")
    out(args, p, "\n".join(lines))


@command("deploy", "attach every stage of a plan where its placement says, all or nothing", """
  sudo xdpnn deploy lfc-plan.json
  sudo xdpnn deploy lfc-plan.json --model lfc.npz --action 7=drop -j""", options=[
    arg("plan", metavar="PLAN.json", help="a plan with a placement (`xdpnn plan ... --hop` "
                                          "or `--at`)"),
    arg("--model", metavar="FILE", help="the model (default: the plan's, which must be the "
                                        "file it was made for)"),
    arg("--action", action="append", default=[], metavar="CLASS=ACTION",
        help=ACTION_HELP + "; taken by the stage that gives the class"),
])
def cmd_deploy(args):
    from xdpnn.loader import deploy
    no_netns(args, "deploy")
    rep = deploy.deploy(args.plan, args.model, args.action)
    lines = [f"deployed {args.plan} ({rep['chain']}, {len(rep['stages'])} stages)"]
    for t in rep["attached"]:
        which = f"stage {t['stage']}" if t["stage"] is not None else "all stages"
        lines.append(f"  {which} at {t['where']}: prog id {t['prog_id']}")
    out(args, rep, "\n".join(lines))


@command("undeploy", "detach every stage of a plan, where its placement says", """
  sudo xdpnn undeploy lfc-plan.json
  sudo xdpnn undeploy lfc-plan.json -j""", options=[
    arg("plan", metavar="PLAN.json", help="the plan given to `xdpnn deploy`"),
])
def cmd_undeploy(args):
    from xdpnn.loader import deploy
    no_netns(args, "undeploy")
    rep = deploy.undeploy(args.plan)
    lines = [f"undeployed {args.plan}: detached {len(rep['detached'])}"]
    lines += [f"  detached {w}" for w in rep["detached"]]
    lines += [f"  not attached: {w}" for w in rep["not_attached"]]
    lines += [f"  left alone: {w}" for w in rep["other"]]
    out(args, rep, "\n".join(lines))


def no_netns(args, name: str) -> None:
    if args.netns:
        raise UsageError(f"-n {args.netns}: {name} takes the namespaces from the plan's "
                         "placement; drop -n")


@command("model random", "write a model with random weights (tests, benchmarks)", """
  xdpnn model random 784-64-32-10 --out random.npz --seed 1
  xdpnn model random 256-32-4 --input headers --out headers.npz
  xdpnn model random 128-64-10 --input-bits 4 --signed --out int4.npz""", root=False, options=[
    arg("shape", type=SHAPE, help="layer sizes, like 784-64-32-10"),
    arg("--out", required=True, metavar="FILE"),
    arg("--seed", type=SEED, default=0),
    arg("--input", choices=("payload", "headers"), default="payload"),
    arg("--port", type=PORT, default=DEFAULT_PORT, help=f"request UDP port ({DEFAULT_PORT})"),
    *INPUT_BITS_OPTIONS,
])
def cmd_model_random(args):
    m = random_model_or_error(args.shape, args.seed, args.input, args.port, args.input_bits,
                              args.signed)
    m.save(args.out)
    out(args, {"out": args.out, "shape": m.shape, "input": m.input},
        f"wrote {args.out}: random {m.shape} ({m.mode}{input_values(m)}), seed {args.seed}")


def input_values(m) -> str:
    """', 8-bit signed values' for a multi-bit model, '' for a binary one."""
    if m.input_bits == 1:
        return ""
    return f", {m.input_bits}-bit {'signed' if m.input_signed else 'unsigned'} values"


@command("model show", "print a model file's shape, classes, provenance and predicted cost", """
  xdpnn model show model.npz
  xdpnn model show model.npz -j

The cost is predicted by loader/cost.py from coefficients measured on one
machine (docs/benchmarks.md, "Cost model"): ns per inference in XDP, per
layer, with the method the codegen picks for each hidden layer.""", root=False,
         options=[arg("file")])
def cmd_model_show(args):
    from xdpnn.loader import cost, datapath, layout
    m = datapath.load_model(args.file)
    p = cost.predict(m)
    machine = cost.coefficients()["machine"]
    info = {"file": args.file, "shape": m.shape, "layers": m.sizes, "input": m.input,
            "classes": m.classes, "provenance": m.provenance,
            "weight_bytes": layout.model_words(m).nbytes,
            "predicted": dict(p.as_dict(), measured_on=machine.get("cpu_model"))}
    names = {"h": "horizontal", "v": "vertical", "w": "vertical-32", "out": "output"}
    lines = [f"{args.file}: {m.shape}, {m.mode} input{input_values(m)}" +
             (f" (port {m.input.get('port')})" if m.mode == "payload" else ""),
             f"  classes: {', '.join(m.classes)}",
             f"  model map value: {info['weight_bytes']} bytes",
             f"  provenance: {json.dumps(m.provenance)}",
             f"  predicted cost: {p.ns:.0f} ns per inference, {p.insns:.0f} verified "
             f"instructions (measured on {machine.get('cpu_model', '?')})",
             f"    fixed (parsing, verdict): {p.fixed_ns:.0f} ns"]
    lines += [f"    layer {c.layer} {c.n_in}-{c.n_out} {names[c.method]}: {c.ns:.0f} ns "
              f"({c.words} words)" for c in p.layers]
    out(args, info, "\n".join(lines))


@command("model add", "run another model on an interface: chosen by the requests' model id "
                      "when serving, else by destination port", """
  sudo xdpnn -n srv model add s0 --model digits.npz --id 1
  sudo xdpnn -n srv model add s0 --model small.npz --id 2 -j
  sudo xdpnn -n dut model add d0 --model dns.npz --id 1 --port 53 --action attack=drop

The model is compiled for its own shape as a program of its own, reached by
tail call from the attached one (docs/serving.md, "Several models"; without
--serve, docs/datapath.md, "Models by port").""", options=[
    arg("iface", type=IFNAME, help="an attached interface"),
    arg("--model", required=True, metavar="FILE",
        help="model file (.npz): payload input when serving; payload or headers by port"),
    arg("--id", required=True, type=MODEL_ID, help="its model id: 1..15"),
    arg("--port", type=PORT, help="not serving: the TCP/UDP destination port whose packets "
                                  "it classifies (payload mode: its UDP request port)"),
    arg("--action", action="append", default=[], metavar="CLASS=ACTION",
        help="not serving: what to do with packets of its CLASS: count (default), pass or "
             "drop; repeatable"),
])
def cmd_model_add(args):
    from xdpnn.loader import multimodel
    r = multimodel.add(args.iface, args.netns, args.model, args.id, args.port, args.action)
    port = f", packets to port {r['port']}" if r.get("port") else ""
    out(args, r, f"{args.iface}: model {r['id']} is {r['shape']} {r['path']} "
                 f"(sha256 {r['sha256'][:12]}, prog id {r['prog_id']}{port})")


@command("model remove", "remove an added model: its requests get unknown_model replies, its "
                         "port's packets go to the attached model", """
  sudo xdpnn -n srv model remove s0 --id 1""", options=[
    arg("iface", type=IFNAME),
    arg("--id", required=True, type=MODEL_ID, help="the model id: 1..15"),
])
def cmd_model_remove(args):
    from xdpnn.loader import multimodel
    r = multimodel.remove(args.iface, args.netns, args.id)
    out(args, r, f"{args.iface}: model {r['id']} removed" +
        (f" ({r['shape']} {r['path']})" if "shape" in r else ""))


@command("model list", "the models of an interface, by id, with their request counts "
                       "(serving) or ports and packets", """
  sudo xdpnn -n srv model list s0
  sudo xdpnn -n srv model list s0 -j""", options=[arg("iface", type=IFNAME)])
def cmd_model_list(args):
    from xdpnn.loader import multimodel
    rows = multimodel.list_models(args.iface, args.netns)
    if "requests" in rows[0]:
        lines = [f"{'id':>3}  {'shape':<18}{'prog id':>8}{'requests':>10}{'replies':>10}"
                 f"{'errors':>8}  model"]
        lines += [f"{r['id']:>3}  {r['shape']:<18}{r['prog_id']:>8}{r['requests']:>10}"
                  f"{r['replies']:>10}{r['errors']:>8}  {r['path']} (sha256 {r['sha256'][:12]})"
                  for r in rows]
    else:
        lines = [f"{'id':>3}  {'shape':<18}{'prog id':>8}{'port':>7}{'classified':>12}  model"]
        lines += [f"{r['id']:>3}  {r['shape']:<18}{r['prog_id']:>8}"
                  f"{(r['port'] or ('rest' if r['id'] == 0 else '-')):>7}{r['classified']:>12}"
                  f"  {r['path']} (sha256 {r['sha256'][:12]})" for r in rows]
    out(args, rows, "\n".join(lines))


def onnx_import():
    from xdpnn.trainer import onnx_import as mod
    return mod


def is_keras(path: str) -> bool:
    from xdpnn.trainer.larq_import import SUFFIXES
    return path.lower().endswith(SUFFIXES)


def framework(path: str):
    """(input count, bits -> classes) of a graph or Keras file, run by its framework."""
    if is_keras(path):  # TensorFlow runs in a child: with it loaded, BCC crashes
        from xdpnn.trainer import larq_import
        return (larq_import.framework_in_child(path)[0],
                lambda bits: larq_import.framework_in_child(path, bits)[1])
    graph = onnx_import().load_graph(path)
    return (onnx_import().graph_inputs(graph),
            lambda bits: onnx_import().framework_classes(graph, bits))


def import_any(path: str, mode: str | None, port: int | None):
    """The model of a (Q)ONNX graph, or of a Larq model in a Keras file (.h5, .keras)."""
    source = os.path.basename(path)
    if is_keras(path):
        from xdpnn.trainer import larq_import
        return larq_import.import_keras(larq_import.load_keras(path), mode, port, source)
    mod = onnx_import()
    return mod.import_graph(mod.load_graph(path), mode, port=port, source=source)


def _graph_step(step):
    """Runs an import/export step: GraphError and missing packages become exit codes."""
    mod = onnx_import()
    try:
        return step()
    except mod.GraphError as e:
        raise errors.GraphError(str(e)) from None
    except ModuleNotFoundError as e:
        raise errors.MissingFeatureError(str(e)) from None


def _class_names(text: str) -> list[str]:
    names = text.split(",")
    if not all(n and n.isprintable() for n in names) or len(set(names)) != len(names):
        raise ValueError
    return names


CLASS_NAMES = _typed(_class_names, "distinct class names joined by ',', like benign,attack")


@command("import", "read a binarized MLP from a QONNX or ONNX graph (or a Larq model) and "
                   "write a model file, with batch norm and scales folded into integers", f"""
  xdpnn import bnn.onnx --out bnn.npz
  xdpnn import larq_mlp.h5 --out larq.npz                  (Larq, with TensorFlow installed)
  xdpnn import finn_streamlined.onnx --out flows.npz --input headers --classes benign,attack
  sudo xdpnn verify --model bnn.npz --graph bnn.onnx      kernel vs the framework

Accepted: Flatten/Reshape at the input, input binarized by BipolarQuant, Sign
or MultiThreshold (or annotated BIPOLAR/BINARY); MatMul or Gemm with ±c
weights (constants, Quant or BipolarQuant); BatchNormalization, Add, Sub,
Mul, Div, Cast; BipolarQuant, Sign or one-threshold MultiThreshold as the
activation; ArgMax at the end.  A .h5 or .keras file is read as a Larq
model: QuantDense layers and BatchNormalization.  docs/import.md.

exit code {errors.GraphError.exit_code}: the graph does not fit (the message names the node)""",
         root=False, options=[
    arg("file", metavar="GRAPH", help="an .onnx file (QONNX or plain ONNX), or a Larq model "
                                      "(.h5, .keras)"),
    arg("--out", required=True, metavar="FILE", help="model file to write"),
    arg("--input", choices=("payload", "headers"),
        help="input mode of the model (default: the graph's xdpnn.input, else payload)"),
    arg("--classes", type=CLASS_NAMES, metavar="NAMES",
        help="class names, comma separated (default: the graph's xdpnn.classes, else class0..)"),
    arg("--port", type=PORT, help=f"payload mode: request UDP port ({DEFAULT_PORT})"),
])
def cmd_import(args):
    from xdpnn.trainer.model import ModelError
    mod = onnx_import()
    model = _graph_step(lambda: import_any(args.file, args.input, args.port))
    if args.classes:
        if len(args.classes) != model.sizes[-1]:
            raise UsageError(f"--classes: {len(args.classes)} names, the graph has "
                             f"{model.sizes[-1]} classes")
        model.classes = args.classes
        try:
            model.validate()
        except ModelError as e:
            raise UsageError(f"--classes: {e}") from None
    mod.save_atomic(args.out, model.save)
    info = {"graph": args.file, "out": args.out, "shape": model.shape, "input": model.input,
            "classes": model.classes, "output": model.provenance["output"]}
    out(args, info, f"wrote {args.out}: {model.shape} ({model.mode}) from {args.file}, "
                    f"output scores {model.provenance['output']}")


@command("export", "write a model file as a QONNX graph (qonnx runs it to the same classes; "
                   "FINN reads it)", """
  xdpnn export model.npz --out model.onnx
  xdpnn import model.onnx --out again.npz       the same model back""", root=False, options=[
    arg("model", metavar="FILE", help="model file (.npz)"),
    arg("--out", required=True, metavar="ONNX", help="graph file to write"),
])
def cmd_export(args):
    from xdpnn.loader import datapath
    model = datapath.load_model(args.model)
    mod = onnx_import()
    g = _graph_step(lambda: mod.export_graph(model))
    mod.save_atomic(args.out, lambda p: open(p, "wb").write(g.SerializeToString()))
    out(args, {"model": args.model, "out": args.out, "shape": model.shape,
               "nodes": len(g.graph.node)},
        f"wrote {args.out}: {model.shape} as a QONNX graph of {len(g.graph.node)} nodes")


@command("send", "send requests with random inputs, or a pcap's frames, from an interface "
                 "(low rate, bounded)", """
  sudo xdpnn -n gen send g0 --count 23                 23 random 32-byte requests
  sudo xdpnn -n gen send g0 --count 1000 --bytes 98 --port 9696
  sudo xdpnn -n gen send g0 --pcap captured.pcap""", options=[
    arg("iface", type=IFNAME),
    arg("--count", type=int_in(1, 10**7),
        help="frames to send (23; with --pcap, all of them)"),
    arg("--bytes", type=int_in(0, 1472), default=32,
        help="request payload bytes (32: 256 inputs)"),
    arg("--port", type=PORT, default=DEFAULT_PORT, help=f"request UDP port ({DEFAULT_PORT})"),
    arg("--seed", type=SEED, default=0, help="seed of the random inputs"),
    arg("--pcap", metavar="FILE", help="send this file's frames instead"),
    arg("--max-seconds", type=SECONDS, default=30.0, help="stop after this long (30)"),
])
def cmd_send(args):
    import numpy as np

    from xdpnn.loader.netns import ifindex, netns
    from xdpnn.traffic import packets
    from xdpnn.traffic.sender import send_frames
    with netns(args.netns):
        ifindex(args.iface, args.netns)
    args.hex = None
    if args.pcap:
        frames = read_frames(args)[:args.count]
    else:
        rng = np.random.default_rng(args.seed)
        frames = [packets.request(rng.integers(0, 256, args.bytes, dtype=np.uint8).tobytes(),
                                  args.port) for _ in range(args.count or 23)]
    try:
        sent = send_frames(args.netns, args.iface, frames, max_seconds=args.max_seconds)
    except OSError as e:
        raise XdpnnError(f"send on {args.iface}: {e.strerror or e}") from None
    out(args, {"iface": args.iface, "sent": sent, "requested": len(frames)},
        f"sent {sent} of {len(frames)} frames on {args.iface}")


@command("query", "send requests to a model served from XDP (attach --serve) and report "
                  "classes, losses, throughput and round-trip times", """
  xdpnn -n client query 198.18.1.2 --count 1000               1000 random 32-byte inputs
  xdpnn -n client query 2001:2:0:1::2 --count 10000 --inflight 16 --scores -j
  xdpnn -n client query 198.18.1.2 --rate 2000 --max-seconds 5 --bytes 98
  xdpnn query 198.18.1.2 --inputs inputs.hex --each            one input per line, in hex
  xdpnn query 198.18.1.2 --pcap requests.pcap                  the UDP payloads of a capture
  xdpnn -n client query 198.18.1.2 --data digits --inflight 8   the digits test split: accuracy

Closed loop (default): --inflight requests outstanding at a time.  Open
loop: --rate requests per second, whatever comes back.  Either way at most
--count requests for at most --max-seconds, then one --timeout for the last
replies; a reply that does not come within --timeout is lost.  Root only
for -n.""", root=False, options=[
    arg("server", type=ADDRESS, help="the server's address (IPv4 or IPv6)"),
    arg("--port", type=PORT, default=DEFAULT_PORT, help=f"the server's port ({DEFAULT_PORT})"),
    arg("--model-id", type=int_in(0, 65535), default=0, help="model id (0: the attached model)"),
    one_of(arg("--bytes", type=int_in(1, 1400), help="random inputs of this many bytes (32)"),
           arg("--inputs", metavar="FILE", help="inputs from a file, one per line in hex"),
           arg("--pcap", metavar="FILE",
               help="inputs from the UDP payloads of a pcap (a request header is stripped)"),
           arg("--data", metavar="SOURCE",
               help="the labeled test split of a data source, to score the replies: digits, "
                    "mnist:DIR, csv:FILE as `train` splits it by default, or model:FILE, the "
                    "split that model file was tested on"),
           required=False),
    arg("--count", type=int_in(1, 10**8),
        help="requests to send (100; with --inputs, --pcap or --data, one per input)"),
    one_of(arg("--rate", type=float_in(0, 10**7), help="open loop: requests per second"),
           arg("--inflight", type=int_in(1, 4096), help="closed loop: requests outstanding (1)"),
           required=False),
    arg("--max-seconds", type=SECONDS, default=10.0, help="stop sending after this long (10)"),
    arg("--timeout", type=float_in(0, 60), default=1.0, help="seconds to wait for a reply (1)"),
    arg("--scores", action="store_true", help="ask for the output scores too"),
    arg("--seed", type=SEED, default=0, help="seed of the random inputs"),
    arg("--each", action="store_true", help="also print every reply"),
])
def cmd_query(args):
    from xdpnn import client
    inputs = query_inputs(args)
    labels = getattr(args, "labels", None)
    with client.Client(args.server, args.port, args.model_id, args.netns, args.timeout) as c:
        rep = c.run(inputs, count=args.count or (len(inputs) if args.inputs or args.pcap or
                                                 args.data else 100),
                    rate=args.rate, inflight=args.inflight or 1, max_seconds=args.max_seconds,
                    scores=args.scores, keep=args.each or labels is not None)
    replies = rep.pop("replies", [])
    if labels is not None:
        rep["data"] = args.data
        rep["accuracy"] = client.accuracy(replies, labels)
    rtt = rep["rtt_us"]
    lines = [f"query {rep['server']}, model {rep['model']}: {rep['sent']} sent, "
             f"{rep['received']} replies, {rep['lost']} lost in {rep['seconds']} s "
             f"({rep['replies_per_s']:.0f} replies/s, {rep['mode']})",
             "  status: " + (", ".join(f"{k} {v}" for k, v in rep["status"].items()) or "none"),
             "  classes: " + (", ".join(f"{k}: {v}" for k, v in rep["classes"].items())
                              or "none")]
    if rtt:
        lines.append("  rtt us: " + "  ".join(f"{k} {v}" for k, v in rtt.items()))
    if labels is not None:
        a = rep["accuracy"]
        lines.append(f"  accuracy on {args.data}: {a['correct']}/{a['answered']} answered = "
                     f"{a['accuracy']:.4f} ({a['unanswered']} without a class)")
    if args.each:
        rep["replies"] = [None if r is None else
                          {"id": r.id, "status": r.status, "class": r.cls, "scores": r.scores,
                           "rtt_us": round(r.rtt * 1e6, 1)} for r in replies]
        lines += [f"  {i:>6}  " + ("lost" if r is None else
                                   f"id {r['id']} {r['status']} class {r['class']} "
                                   f"rtt {r['rtt_us']} us" +
                                   (f" scores {r['scores']}" if r["scores"] else ""))
                  for i, r in enumerate(rep["replies"])]
    out(args, rep, "\n".join(lines))


def query_inputs(args) -> list[bytes]:
    """The inputs of `query`: random, from a hex file, or from a pcap's UDP payloads."""
    if args.inputs:
        with open(args.inputs) as f:
            lines = [ln.split("#")[0].strip() for ln in f]
        try:
            inputs = [bytes.fromhex(ln) for ln in lines if ln]
        except ValueError as e:
            raise UsageError(f"--inputs {args.inputs}: not one hex input per line ({e})") from None
    elif args.data:
        inputs, args.labels = data_inputs(args.data)
    elif args.pcap:
        from scapy.all import UDP, Ether

        from xdpnn.bpf.shared import SRV
        args.hex = None
        inputs = []
        for f in read_frames(args):
            udp = Ether(f).getlayer(UDP)
            payload = bytes(udp.payload) if udp is not None else b""
            if payload[:3] == SRV["magic"].to_bytes(2, "big") + bytes([SRV["version"]]):
                payload = payload[SRV["hdr_bytes"]:]  # already a request: its input
            if payload:
                inputs.append(payload)
    else:
        import numpy as np
        rng = np.random.default_rng(args.seed)
        inputs = [rng.integers(0, 256, args.bytes or 32, dtype=np.uint8).tobytes()
                  for _ in range(min(args.count or 100, 1 << 16))]
    if not inputs:
        raise UsageError("query: no inputs (an empty file, or a pcap without UDP payloads)")
    return inputs


def data_inputs(source: str) -> tuple[list[bytes], list[int]]:
    """The inputs and labels of a labeled test split (query --data)."""
    from xdpnn.loader.datapath import binary_inputs_only, load_model
    from xdpnn.trainer import data, reference, train
    try:
        if source.startswith("model:"):
            path = source.removeprefix("model:")
            model = load_model(path)
            binary_inputs_only(model, path, "query --data")  # requests carry bits
            test = train.labeled_test_set(model)
        else:
            ds = data.load(source)
            if ds.mode != "payload":
                raise UsageError(f"query: --data {source}: a {ds.mode}-mode source; requests "
                                 "carry payload-mode inputs")
            test = train.split(ds, train.Config())[2]
    except data.DataError as e:
        raise errors.DataError(f"query: --data {source}: {e}") from None
    except (ValueError, OSError) as e:
        raise UsageError(f"query: --data {source}: no labeled test split ({e})") from None
    return [reference.bytes_from_bits(b) for b in test.bits], test.labels.tolist()


@command("serve-userspace", "answer serving requests from a user-space server (C or Python) "
                            "instead of XDP, to compare the two", """
  sudo xdpnn -n server serve-userspace --model digits.npz         the C server on port 9595
  sudo xdpnn -n server serve-userspace --model m.npz --impl python --port 9696 --max-seconds 60
  sudo xdpnn -n server serve-userspace --model m.npz --cpu 1 -j

The same protocol and reply payloads as `attach --serve` (docs/serving.md),
from a UDP socket on every address of the namespace, IPv4 and IPv6.  The C
server is compiled now for the model (a C compiler is needed); the Python
one uses the reference inference.  Runs until Ctrl-C, SIGTERM or
--max-seconds, then prints its counters.  Root only for -n.""", root=False, options=[
    arg("--model", required=True, metavar="FILE", help="a payload-mode model file"),
    arg("--port", type=PORT, default=DEFAULT_PORT, help=f"UDP port ({DEFAULT_PORT})"),
    arg("--impl", choices=("c", "python"), default="c",
        help="c: shape-specialised, batched (default); python: the reference"),
    arg("--cpu", type=int_in(0, 4095), help="pin the server to this CPU"),
    arg("--max-seconds", type=SECONDS, help="stop after this long (default: until Ctrl-C)"),
])
def cmd_serve_userspace(args):
    from xdpnn.loader import datapath
    from xdpnn.traffic.userserve import UserServer
    model = datapath.load_model(args.model)
    datapath.binary_inputs_only(model, args.model, "serve-userspace")
    srv = UserServer(model, args.port, args.impl, args.netns, args.cpu, args.max_seconds)
    srv.start()
    try:
        if not args.json:
            until = f"for {args.max_seconds:g} s" if args.max_seconds else "until Ctrl-C"
            print(f"serving {args.model} ({model.shape}) on UDP port {args.port} with the "
                  f"{args.impl} server, pid {srv.pid}"
                  + (f" on CPU {args.cpu}" if args.cpu is not None else "") + f", {until}",
                  flush=True)
        counters = srv.wait()
    except KeyboardInterrupt:  # the normal end of a server
        counters = srv.stop()
    if counters is None:
        raise XdpnnError(f"serve-userspace: the {args.impl} server ended without its "
                         f"counters: {(srv.error or 'no message').strip()}")
    status = ", ".join(f"{k} {v}" for k, v in counters["status"].items() if v) or "none"
    out(args, {"model": args.model, "shape": model.shape, "port": args.port, "impl": args.impl,
               **counters},
        f"{counters['requests']} requests, {counters['replies']} replies; status: {status}")


@command("train", "train a binarized network on labeled data and export it to a model file, "
                  "with a report (no root needed)", f"""
  xdpnn train --data digits --out digits.npz
  xdpnn train --data digits --hidden 256,256 --epochs 100 --seed 3 --out digits.npz
  xdpnn train --data mnist:/data/mnist --hidden 256 --out mnist.npz    (IDX files, never downloaded)
  xdpnn train --data csv:flows.csv --label-column app --levels 8 --out flows.npz
  xdpnn train --data traffic --hidden 64 --out traffic.npz             (headers mode)
  xdpnn train --data pcaps:captures/ --out apps.npz                    (one pcap per class)
  xdpnn train --data pcaps:captures/ --input flow --out flows.npz      (flow mode)
  xdpnn train --data digits --input-bits 8 --out digits8.npz           (8-bit pixels)

exit code {errors.DataError.exit_code}: the data source cannot be read (the message names the \
file and the problem)""", root=False, options=[
    arg("--data", default="digits", metavar="SOURCE",
        help="digits (default), mnist:DIR, csv:FILE, traffic or pcaps:DIR; docs/training.md"),
    arg("--hidden", default="128", metavar="SIZES",
        type=_typed(lambda t: [int(h, 10) for h in t.split(",")], "sizes like 256,256"),
        help="hidden layer sizes, comma separated (128)"),
    arg("--out", required=True, metavar="FILE", help="model file to write"),
    arg("--epochs", type=int_in(1, 100_000), default=60, help="most epochs (60; early stopping)"),
    arg("--patience", type=int_in(1, 100_000), default=12,
        help="stop after this many epochs without a better validation accuracy (12)"),
    arg("--batch-size", type=int_in(2, 1 << 20), default=64, help="mini-batch size (64)"),
    arg("--lr", type=float_in(0, 10), default=0.01, help="Adam learning rate (0.01)"),
    arg("--seed", type=SEED, default=0,
        help="seed of the split, the initialization and the batch order (0)"),
    arg("--test-fraction", type=float_in(0, 0.99), default=0.25,
        help="share of each class held out for the test (0.25)"),
    arg("--levels", type=int_in(1, 64),
        help="thermometer bits per value: digits 1..4 (4), csv (4)"),
    arg("--label-column", metavar="NAME", help="csv: the label column (the last)"),
    arg("--port", type=PORT, default=DEFAULT_PORT,
        help=f"payload models: UDP port of requests ({DEFAULT_PORT})"),
    arg("--input", choices=("headers", "flow"),
        help="pcaps:DIR: one input per packet (headers, the default) or per flow record "
             "(flow mode)"),
    arg("--input-bits", type=int_in(1, 8), default=1, metavar="K",
        help="digits: 1 (thermometer bits, default) or 2..8: each pixel as one k-bit value, "
             "round(pixel * (2^k - 1) / 16); docs/training.md"),
    arg("--signed", action="store_true",
        help="with --input-bits: k-bit two's complement values, the pixel value less 2^(k-1)"),
])
def cmd_train(args):
    from xdpnn.trainer import data, train
    from xdpnn.trainer.model import ModelError
    cfg = train.Config(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, patience=args.patience, seed=args.seed,
                       test_fraction=args.test_fraction)
    try:
        ds = data.load(args.data, levels=args.levels, label_column=args.label_column,
                       split_seed=args.seed, test_fraction=args.test_fraction,
                       input_mode=args.input, input_bits=args.input_bits, signed=args.signed)
        model = train.train(ds, cfg, port=args.port, progress=None if args.json else print)
    except data.DataError as e:
        raise errors.DataError(str(e)) from None
    except ModelError as e:
        raise UsageError(f"{args.data}: {e}") from None
    model.save(args.out)
    report = model.provenance["report"]
    out(args, {"out": args.out, "report": report},
        f"{train.format_report(report)}\nwrote {args.out}")


@command("exporter", "serve the counters of attached datapaths as Prometheus metrics over "
                     "HTTP", """
  sudo xdpnn exporter                               every attached datapath, on 127.0.0.1:9797
  sudo xdpnn -n dut exporter d0 --listen 127.0.0.1:9800
  curl -s http://127.0.0.1:9797/metrics | grep xdpnn_class_packets

Counters are read from the pins at each scrape; Ctrl-C or SIGTERM stops it.""", options=[
    arg("iface", nargs="*", type=IFNAME,
        help="datapaths to export, by interface (in -n NETNS); default: every attached one"),
    arg("--listen", metavar="ADDR:PORT", help="where to serve /metrics (127.0.0.1:9797)"),
])
def cmd_exporter(args):
    from xdpnn.loader import exporter
    return exporter.command(args)


@command("bench", "measure the forwarding rate with and without inference, ns per inference "
                  "in XDP and in user space (namespaces of its own)", """
  sudo xdpnn bench                       the three default shapes, 5 trials (a few minutes)
  sudo xdpnn bench --quick               a smoke run (under a minute)
  sudo xdpnn bench --shape 256-32-16-2 --model model.npz --trials 7 --out results/mine -j
  sudo xdpnn bench --serving             requests answered by XDP against a user-space C server
  sudo xdpnn bench --stages              one CPU against two CPUMAP stages, planner's prediction
  sudo xdpnn bench --stages --quick --shape 784-64-32-10

Writes bench.json, bench.md and bench.png (with matplotlib) to --out
(default results/bench-<time>/); with --serving bench.json, bench.md and
bench-serving.png, for the first --shape or --model (784-64-32-10); with
--stages bench.json and bench.md for each --shape (784-256-256-10 and
784-1024-1024-1024-10; --quick 784-64-32-10);
docs/benchmarks.md explains every figure.""", options=[
    arg("--quick", action="store_true", help="short trials: a smoke run"),
    arg("--serving", action="store_true",
        help="the serving section instead: XDP replies against the user-space C server"),
    arg("--stages", action="store_true",
        help="the stages section instead: a model on one CPU against two CPUMAP stages on "
             "CPUs 0 and 1, with the planner's predicted rates"),
    arg("--shape", type=SHAPE, action="append", metavar="SHAPE",
        help="a random model of this shape (repeatable; default 256-32-16-2, 784-64-32-10, "
             "784-256-256-10)"),
    arg("--model", action="append", default=[], metavar="FILE",
        help="also measure this model file (repeatable)"),
    arg("--trials", type=int_in(1, 100), help="trials per figure (5)"),
    arg("--seconds", type=float_in(0.05, 60, lo_open=False),
        help="seconds per datapath per rate trial (1, --quick 0.2)"),
    arg("--napi", choices=("softirq", "threaded"), default="softirq",
        help="veth NAPI in softirq (default) or in kernel threads"),
    arg("--no-scaling", action="store_true",
        help="skip the 1-CPU against 2-CPU trials (run where there are 2 CPUs or more)"),
    arg("--netns-prefix", metavar="NAME",
        help="prefix of the namespaces the bench makes, any section (xdpnn-bench-<pid>; "
             "--serving xdpnn-serving-<pid>)"),
    arg("--out", metavar="DIR", help="results directory (results/bench-<time>)"),
])
def cmd_bench(args):
    from xdpnn.traffic import bench
    return bench.command(args)


@command("demo", "build namespaces, attach a model, send traffic, show counts, clean up", """
  sudo xdpnn demo
  sudo xdpnn demo --packets 500 --model model.npz""", options=[
    arg("--packets", type=int_in(1, 100_000),
        help="test samples to send (default: the model's whole test split)"),
    arg("--model", metavar="FILE", help="a model made by `xdpnn train` in payload mode "
                                        "(default: the digits model shipped with xdpnn)"),
])
def cmd_demo(args):
    from xdpnn.traffic import demo
    return demo.run(args)


def print_ebpf(model, record_input: bool = False):
    from xdpnn.loader import compile
    text, flags = compile.source_and_flags(model, record_input)
    print("/* cflags: " + " ".join(flags) + " */")
    print(text)


# --- the parser, built from the table -------------------------------------------

class Parser(argparse.ArgumentParser):
    """Reports bad usage as a UsageError, so that it is one line (or JSON)
    with exit code 2 like every other error."""

    def error(self, message):
        # "argument -n/--netns: \0NAME: expected ..." -> "--netns NAME: expected ..."
        message = re.sub(rf"argument (?:[^\s/]+/)?(\S+?): {_BAD_VALUE}", r"\1 ", message)
        message = re.sub(r"argument (?:[^\s/]+/)?(\S+?): ", r"\1: ", message)
        name = self.prog.removeprefix("xdpnn").strip()
        raise UsageError(f"{name}: {message}" if name else message)


def _global_options(p: argparse.ArgumentParser, default) -> None:
    """-j and -n, accepted before and after the command.  After it, they
    default to SUPPRESS, so that they never undo what was given before."""
    p.add_argument("-j", "--json", action="store_true", default=default(False),
                   help="print JSON (errors too)")
    p.add_argument("-n", "--netns", metavar="NAME", type=NETNS, default=default(None),
                   help="work on interfaces in network namespace NAME (like `ip -n`)")
    p.add_argument("--ebpf", action="store_true", default=default(False),
                   help=argparse.SUPPRESS)


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}"
                                       for code, meaning in errors.exit_code_list())


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="xdpnn",
               description="Binarized neural network inference in XDP, per packet, beside a "
                           "forwarding path.",
               epilog="Run `xdpnn COMMAND --help` for each command's options and examples.\n\n"
                      + _exit_codes(),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, lambda value: value)
    subs = {"": p.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    for name, c in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group not in subs:  # "model show": a "model" command with actions
            g = subs[""].add_parser(group, help=f"{group} files: "
                                    + ", ".join(n.split()[1] for n in COMMANDS
                                                if n.startswith(group + " ")))
            subs[group] = g.add_subparsers(dest="action", required=True, metavar="ACTION")
        sp = subs[group].add_parser(
            leaf, help=c.help, description=c.help, epilog="examples:" + c.examples,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=c.func, command_name=name)
        _global_options(sp, lambda value: argparse.SUPPRESS)
        for option in c.options:
            if option[0] == "group":
                g = sp.add_mutually_exclusive_group(required=option[1])
                for flags, kw in option[2]:
                    g.add_argument(*flags, **kw)
            else:
                sp.add_argument(*option[0], **option[1])
    return p


if __name__ == "__main__":
    run()
