"""The planner (`xdpnn plan`, docs/partitioning.md): where to cut a model
into stages of contiguous layers, and the plan file that says so.

The cut is exact: a dynamic program over layer boundaries finds the cut
into N stages whose slowest stage is as fast as possible (min-max), among
the cuts where every stage stays within the verifier budget.  Layer costs
are the cost model's predictions (loader/cost.py) or test-run timings of
one stage per layer (measure()).  With split, the boundaries are those
between groups of 64 neurons of a hidden layer too (units()), each group
costing its share of its layer.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from xdpnn.loader import cost, stages
from xdpnn.loader.errors import ModelFileError, UsageError
from xdpnn.loader.netns import check_ifname, check_netns_name
from xdpnn.trainer.model import DEFAULT_PORT, Model

# Predicted verified instructions one stage may take: half the verifier's
# 1M, because the prediction's error grows with the program.
BUDGET = 500_000
# A request's headers (Ethernet 14, IPv4 20, UDP 8): packet-carried
# activations go in front of the whole frame as it arrived, so a frame
# between stages is these, the input bytes, then stages.carried(bits).
REQUEST_HEADERS = 14 + 20 + 8
# Per-frame CPU costs outside the layers, in ns, measured by `xdpnn bench
# --stages` in CPU time on the machine of loader/cost_model.json
# (docs/benchmarks.md, "Stages across CPUs"): PATH_NS, what the receiving
# CPU spends per frame to receive, forward and count it with no inference
# (the live generator on that CPU included); HANDOFF_NS, what handing a
# frame on by CPUMAP adds on the handing CPU (activations put in front,
# the frame queued), net of the forwarding that moves to the next CPU;
# NEXT_NS, what a later stage's CPU spends per frame beside its layers
# (the CPUMAP kthread: dequeue, the activations cut off, forwarding, and
# on veth the receiver's NAPI too).
PATH_NS = 303.0
HANDOFF_NS = 245.0
NEXT_NS = 497.0
FORMAT = "xdpnn-plan"


def min_max_cut(costs: list[float], n: int, insns: list[float] | None = None,
                budget: float | None = None,
                allowed: list[bool] | None = None) -> tuple[float, list[tuple[int, int]]]:
    """The cut of layers 0..len(costs)-1 into n contiguous non-empty stages
    that minimizes the largest stage cost, with every stage's instructions
    (the sum of its layers' insns) at most budget, and (allowed) a stage
    ending before layer j only where allowed[j].  Ties go to the cut whose
    stages end earliest.  ValueError when none exists."""
    L = len(costs)
    if not 1 <= n <= L:
        raise ValueError(f"{n} stages of {L} layers: expected 1..{L}")
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    ipre = np.concatenate([[0.0], np.cumsum(insns if insns is not None else [0.0] * L)])

    def fits(i, j):
        return budget is None or ipre[j] - ipre[i] <= budget

    # best[k][j]: the smallest max cost of layers [0, j) in k stages.
    best = [[math.inf] * (L + 1) for _ in range(n + 1)]
    back = [[-1] * (L + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for j in range(k, L + 1):
            if j < L and allowed is not None and not allowed[j]:
                continue
            for i in range(k - 1, j):
                if best[k - 1][i] == math.inf or not fits(i, j):
                    continue
                v = max(best[k - 1][i], pre[j] - pre[i])
                if v < best[k][j]:
                    best[k][j], back[k][j] = v, i
    if best[n][L] == math.inf:
        raise ValueError(f"no cut into {n} stages keeps every stage within {budget:,.0f} "
                         "predicted instructions"
                         + (f" and every hand-off within {stages.ROOM} bytes in front of the "
                            "frame" if allowed is not None else ""))
    cuts, j = [], L
    for k in range(n, 0, -1):
        i = back[k][j]
        cuts.append((i, j))
        j = i
    return float(best[n][L]), cuts[::-1]


def predicted_layers(sizes: list[int], methods=None) -> tuple[list[float], list[float]]:
    """ns and verified instructions per layer; the fixed cost (parsing, the
    verdict) goes to layer 0, which stage 0 always holds."""
    p = cost.predict(sizes, methods)
    ns = [c.ns for c in p.layers]
    insns = [c.insns for c in p.layers]
    ns[0] += p.fixed_ns
    insns[0] += p.fixed_insns
    return ns, insns


def units(sizes: list[int], ns: list[float], insns: list[float], split: bool,
          multibit: bool = False) -> tuple[list[tuple[int, int]], list[float], list[float]]:
    """What a cut can fall between: whole layers, or (split) the groups of
    stages.GROUP neurons of each hidden layer but a multi-bit first one,
    as (layer, first neuron), with each unit's share of its layer's ns and
    instructions (in proportion to its neurons; a vertical layer pays for
    whole groups, which the last one's share slightly under-counts)."""
    out, u_ns, u_insns = [], [], []
    for l, (c, i) in enumerate(zip(ns, insns)):
        n_out = sizes[l + 1]
        whole = not split or l == len(ns) - 1 or (l == 0 and multibit) or n_out <= stages.GROUP
        for start in [0] if whole else range(0, n_out, stages.GROUP):
            share = 1.0 if whole else (min(n_out, start + stages.GROUP) - start) / n_out
            out.append((l, start))
            u_ns.append(c * share)
            u_insns.append(i * share)
    return out, u_ns, u_insns


def cut_units(sizes: list[int], ns: list[float], insns: list[float], n: int,
              split: bool, multibit: bool = False,
              carry: str | None = None) -> tuple[float, list[stages.Cut]]:
    """min_max_cut over units(), as stage cuts; ValueError when none fits.
    carry ("cpumap" or "hops"): the activations travel in front of the
    frame, so only cuts whose hand-off fits stages.ROOM bytes."""
    where, u_ns, u_insns = units(sizes, ns, insns, split, multibit)
    allowed = None if carry is None else [
        stages.carried(sizes[l], carry == "hops", neuron) <= stages.ROOM for l, neuron in where]
    slowest, parts = min_max_cut(u_ns, n, u_insns, BUDGET, allowed)
    point = where + [(len(ns), 0)]
    return slowest, [stages.Cut(point[a][0], point[b][0], point[a][1], point[b][1])
                     for a, b in parts]


def auto_cuts(model: Model, methods=None) -> list[stages.Cut] | None:
    """None when one program is within BUDGET; else the fewest stages that
    are, cut for the fastest slowest stage: at layer boundaries where that
    can be, else inside layers too."""
    ns, insns = predicted_layers(model.sizes, methods)
    if sum(insns) <= BUDGET:
        return None
    for split in (False, True):
        for n in range(2, len(units(model.sizes, ns, insns, split)[0]) + 1):
            try:
                return cut_units(model.sizes, ns, insns, n, split, model.input_bits > 1)[1]
            except ValueError:
                continue
    raise ModelFileError(f"model {model.shape}: a group of {stages.GROUP} neurons alone needs "
                         f"more than {BUDGET:,} predicted verifier instructions "
                         "(docs/partitioning.md)")


def measure(model: Model, repeat: int = 200, rounds: int = 5) -> list[float]:
    """ns per layer from test runs: the model built as one stage per layer,
    unchained, each stage run alone on its own activations (stage 0 on a
    request); the median of rounds of repeat runs each."""
    from xdpnn.loader import bpf_sys
    from xdpnn.traffic import packets

    rng = np.random.default_rng(0)
    n = stages.layers(model)
    built = stages.build_unpinned(model, [(k, k + 1) for k in range(n)], link=False)
    try:
        port = model.input.get("port", DEFAULT_PORT)
        frame = packets.request(bytes(rng.integers(0, 256, (model.sizes[0] + 7) // 8,
                                                   dtype=np.uint8)), port) \
            if model.mode == "payload" else packets.random_frames(rng, 1)[0]
        d = stages.digest(model)
        out = []
        for k, p in enumerate(built.stages):
            if k:
                words = rng.integers(0, 2**63, stages.MAX_WORDS, dtype=np.uint64)
                stages.write_act(built.maps["nn_stage"], k % stages.SLOTS, d, k,
                                 model.sizes[k], words)
            times = [bpf_sys.test_run(p.prog_fd, frame, repeat=repeat)[1]
                     for _ in range(rounds)]
            out.append(float(np.median(times)))
    finally:
        built.close()
    return out


def rates(stage_ns: list[float], path_ns: float = PATH_NS, handoff_ns: float = HANDOFF_NS,
          next_ns: float = NEXT_NS) -> dict:
    """Predicted frames/s of a host that forwards and classifies every
    frame: all stages on one CPU (tail calls: path + layers), or one CPU
    per stage chained by CPUMAP, where the slowest CPU sets the rate:
    stage 0's CPU pays the path, its layers and the hand-off, a later
    stage's CPU NEXT_NS, its layers and (but the last) a hand-off.
    compute_only: the layers alone (what the cut balances)."""
    total, slowest = sum(stage_ns), max(stage_ns)
    last = len(stage_ns) - 1
    per_cpu = [(path_ns if s == 0 else next_ns) + ns + (handoff_ns if s < last else 0)
               for s, ns in enumerate(stage_ns)]
    return {"one_cpu": round(1e9 / (path_ns + total)), "pipelined": round(1e9 / max(per_cpu)),
            "compute_only": {"one_cpu": round(1e9 / total), "pipelined": round(1e9 / slowest)},
            "per_cpu_ns": [round(x, 1) for x in per_cpu],
            "path_ns": path_ns, "handoff_ns": handoff_ns, "next_ns": next_ns}


def frame_bytes(model: Model, bits: int, done: int = 0) -> int:
    """Bytes of a frame carrying bits activations (and done neurons of a
    layer cut inside) from a stage to the next: the request (its headers
    and input bytes; a headers-mode model's packet may be longer) and, in
    front, the stage header and words."""
    payload = (model.raw_bits + 7) // 8 if model.mode == "payload" else 0
    return REQUEST_HEADERS + payload + stages.carried(bits, done=done)


def make(model: Model, path: str | None, n: int, measured: bool = False, mtu: int = 1500,
         methods=None, split: bool = False, carry: str | None = None) -> dict:
    """The plan: n stages cut for the fastest slowest stage; split: cuts
    may fall inside hidden layers; carry ("cpumap", "hops"): the chain
    carries the activations in the frame (cut_units)."""
    ns, insns = predicted_layers(model.sizes, methods)
    costs = measure(model) if measured else ns
    try:
        slowest, cuts = cut_units(model.sizes, costs, insns, n, split, model.input_bits > 1,
                                  carry)
    except ValueError as e:
        raise UsageError(f"--stages {n}: model {model.shape}: {e}") from None
    where, u_costs, u_insns = units(model.sizes, costs, insns, split, model.input_bits > 1)
    start = {p: k for k, p in enumerate(where + [(len(ns), 0)])}
    rows = []
    for s, c in enumerate(cuts):
        a, b = start[c.first, c.first_neuron], start[c.end, c.end_neuron]
        out_bits = model.sizes[c.end] if c.end < len(ns) else 0
        act = frame_bytes(model, out_bits, c.end_neuron) if out_bits else 0
        rows.append({"stage": s, "layers": [c.first, c.end],
                     **({"neurons": [c.first_neuron, c.end_neuron]} if c.split else {}),
                     "ns": round(sum(u_costs[a:b]), 1),
                     "verified_insns": round(sum(u_insns[a:b])), "activation_bytes": act,
                     # the frame less its Ethernet header is what an MTU limits
                     "fits_mtu": act - 14 <= mtu})
    total = sum(costs)
    return {"format": FORMAT, "version": 1,
            "model": {"path": os.path.abspath(path) if path else None, "sha256": model.sha256,
                      "shape": model.shape},
            "costs": "measured" if measured else "predicted", "mtu": mtu, "split": split,
            "stages": rows, "slowest_ns": round(slowest, 1), "total_ns": round(total, 1),
            # One CPU per stage (pipelined) against the whole chain on one CPU.
            "throughput_pps": rates([r["ns"] for r in rows]),
            "layer_ns": [round(c, 1) for c in costs]}


def save(plan: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(plan, f, indent=1)
        f.write("\n")


def read(path: str) -> dict:
    """A plan file, checked to be one (not yet against a model)."""
    try:
        with open(path) as f:
            if os.fstat(f.fileno()).st_size > 1 << 20:
                raise ValueError("more than 1 MiB")
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--plan {path}: cannot read a plan: {e}") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT or \
            not isinstance(plan.get("stages"), list):
        raise UsageError(f"--plan {path}: not an xdpnn plan (`xdpnn plan ... --out` writes one)")
    return plan


def load(path: str, model: Model) -> list[stages.Cut]:
    """The cuts of a plan file, checked against the model it is used with."""
    plan = read(path)
    shape = (plan.get("model") or {}).get("shape")
    if shape != model.shape:
        raise UsageError(f"--plan {path}: made for model {shape}, this model is {model.shape}")
    return stages.check_cuts(model.sizes, [row_cut(r) for r in plan["stages"]], f"--plan {path}")


def row_cut(row) -> list | None:
    """A plan row's [first, end] (+ [first_neuron, end_neuron]), unchecked."""
    if not isinstance(row, dict):
        return None
    layers, neurons = row.get("layers"), row.get("neurons", [])
    if not isinstance(layers, list) or not isinstance(neurons, list):
        return None
    return layers + neurons


# --- placement: where each stage runs (`plan --hop/--at`, `deploy`) -------------

CHAINS = ("tailcalls", "cpumap", "hops")


def parse_where(text: str, what: str) -> dict:
    """NS:IFACE[:PEER] (NS empty: this namespace) as {netns, iface, peer},
    every name checked to be a name, never a path."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"{what} {text}: expected NS:IFACE[:PEER] (an empty NS is this "
                         "network namespace: :eth0:eth1)")
    return check_where({"netns": parts[0] or None, "iface": parts[1],
                        "peer": parts[2] if len(parts) == 3 and parts[2] else None},
                       f"{what} {text}")


def check_where(w, what: str) -> dict:
    """{netns, iface, peer} as a plan file holds it: names or null."""
    if not isinstance(w, dict):
        raise UsageError(f"{what}: expected netns, iface and peer")
    out = {k: w.get(k) for k in ("netns", "iface", "peer")}
    if not isinstance(out["iface"], str) or any(
            v is not None and not isinstance(v, str) for v in out.values()):
        raise UsageError(f"{what}: iface is a name; netns and peer are names or null")
    try:
        check_ifname(out["iface"])
        if out["peer"] is not None:
            check_ifname(out["peer"])
        if out["netns"] is not None:
            check_netns_name(out["netns"])
    except UsageError as e:
        raise UsageError(f"{what}: {e}") from None
    if out["peer"] == out["iface"]:
        raise UsageError(f"{what}: the peer must be another interface than {out['iface']}")
    return out


def place(plan: dict, hops: list[str] | None = None, at: str | None = None,
          cpus: list[int] | None = None) -> dict:
    """Adds where the stages run to a plan: a hop per stage (hops), or all
    on one interface (at), by tail calls or, with cpus, by CPUMAP."""
    n = len(plan["stages"])
    if cpus is not None and not at:
        raise UsageError("--cpus: give the interface with --at NS:IFACE[:PEER]")
    if hops:
        if len(hops) != n:
            raise UsageError(f"--hop: the plan has {n} stages: give --hop once for each, "
                             f"in order (got {len(hops)})")
        where = [parse_where(h, "--hop") for h in hops]
        for s, w in enumerate(where[:-1]):
            if not w["peer"]:
                raise UsageError(f"--hop {hops[s]}: stage {s} hands its frames on out of its "
                                 "peer: NS:IFACE:PEER")
        check_distinct(where, "--hop")
        plan["placement"] = {"chain": "hops"}
        for row, w in zip(plan["stages"], where):
            row.update(w)
    elif at:
        w = parse_where(at, "--at")
        if cpus is not None:
            cpus = stages.check_cpus(cpus, n)
        plan["placement"] = {"chain": "cpumap" if cpus else "tailcalls", **w,
                             **({"cpus": cpus} if cpus else {})}
    return plan


def check_distinct(where: list[dict], what: str) -> None:
    """An interface holds one stage: no name twice in one namespace."""
    seen = set()
    for w in where:
        for name in (w["iface"], w["peer"]):
            if name and (w["netns"], name) in seen:
                ns = f" in netns {w['netns']}" if w["netns"] else ""
                raise UsageError(f"{what}: interface {name}{ns} is given twice (one stage "
                                 "per interface, and its peer)")
            seen.add((w["netns"], name))


def targets(plan: dict, path: str) -> list[dict]:
    """Where a plan file says its stages run: one attach each, in order, as
    {stage (a hop's, else None), netns, iface, peer, cpus}; checked again
    here, since a file can say anything."""
    what = f"plan {path}"
    p = plan.get("placement")
    if not isinstance(p, dict) or p.get("chain") not in CHAINS:
        raise UsageError(f"{what}: no placement (write one with `xdpnn plan ... --hop "
                         "NS:IFACE:PEER` per stage, or --at NS:IFACE[:PEER] [--cpus C1,...])")
    if p["chain"] != "hops":
        w = check_where(p, f"{what}: placement")
        cpus = p.get("cpus")
        if p["chain"] == "cpumap" and not (isinstance(cpus, list) and cpus
                                           and all(type(c) is int for c in cpus)):
            raise UsageError(f"{what}: a CPUMAP placement needs cpus, a list of CPU numbers")
        return [{"stage": None, **w, "cpus": cpus if p["chain"] == "cpumap" else None}]
    rows = plan["stages"]
    where = [check_where(r, f"{what}: stage {s}") for s, r in enumerate(rows)]
    check_distinct(where, what)
    return [{"stage": s, **w, "cpus": None} for s, w in enumerate(where)]
