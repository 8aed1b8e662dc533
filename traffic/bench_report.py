"""What `xdpnn bench` writes: the result document as JSON (keys documented
in docs/benchmarks.md), a markdown table, and a plot when matplotlib is
installed (`pip install xdpnn[bench]`)."""
from __future__ import annotations

import json
from pathlib import Path


def _range(s: dict, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return (f"{fmt.format(s['median'] * scale)} "
            f"({fmt.format(s['min'] * scale)}-{fmt.format(s['max'] * scale)})")


# The user-space baselines (traffic/baseline.py), in table order.
BASELINES = {"c_fixed": "C fixed shape, scalar popcnt", "c_simd": "C fixed shape, SIMD",
             "c_generic": "C generic loop", "numpy_batch": "numpy batched"}


def markdown(r: dict) -> str:
    """Two tables (forwarding, then ns per inference) and what they depend on."""
    env = r["environment"]
    lines = ["| datapath on the host under test | Mpps, median (min-max) | ratio to plain "
             "forwarding | ns/packet (bpf_stats) | ns/packet (test run) |",
             "|---|---|---|---|---|"]
    labels = {"forward": "plain forwarding (no inference)", "reflect": "XDP_TX reflection"}
    for c in r["forwarding"]:
        name = labels.get(c["config"], f"forwarding + inference {c['config']}")
        lines.append(f"| {name} | {_range(c['pps'], 1e-6, '{:.2f}')} | "
                     f"{_range(c['ratio_to_forward'], 1, '{:.2f}')} | "
                     f"{_range(c['bpf_stats_ns_per_packet'])} | "
                     f"{_range(c['test_run_ns_per_packet'])} |")
    names = [b for b in BASELINES if any(b in i["baselines"] for i in r["inference"])]
    lines += ["", "| model | weight bytes | XDP ns/request (test run: parse + inference) | " +
              " | ".join(BASELINES[b] for b in names) +
              " | XDP / fastest scalar | XDP / fastest overall |",
              "|---|---|---|" + "---|" * (len(names) + 2)]
    for i in r["inference"]:
        cells = [_range(i["baselines"][b]["ns"]) if b in i["baselines"] else "-" for b in names]
        lines.append(f"| {i['model']} | {i['weight_bytes']} | {_range(i['xdp_ns'])} | " +
                     " | ".join(cells) +
                     f" | {_range(i['xdp_over_fastest_scalar'], 1, '{:.1f}')}, "
                     f"{i['fastest_scalar']} | {_range(i['xdp_over_fastest'], 1, '{:.1f}')}, "
                     f"{i['fastest']} |")
    lines += ["", ("ns per inference, one input at a time; every baseline gave the reference's "
                   "class on every input before it was timed; a ratio is XDP over that baseline "
                   "in the same trial.")]
    if r.get("scaling"):
        n = r["scaling"][0]["cpus"]
        lines += ["", f"| datapath | Mpps on 1 CPU | Mpps on {n} CPUs | speedup | "
                      "speedup in CPU time | "
                      f"ratio to plain forwarding, 1 CPU | ratio to plain forwarding, {n} CPUs |",
                  "|---|---|---|---|---|---|---|"]
        for c in r["scaling"]:
            name = labels.get(c["config"], f"forwarding + inference {c['config']}")
            ratios = ([_range(c["ratio_to_forward_1_cpu"], 1, "{:.2f}"),
                       _range(c[f"ratio_to_forward_{n}_cpus"], 1, "{:.2f}")]
                      if "ratio_to_forward_1_cpu" in c else ["1", "1"])
            lines.append(f"| {name} | {_range(c['pps_1_cpu'], 1e-6, '{:.2f}')} | "
                         f"{_range(c[f'pps_{n}_cpus'], 1e-6, '{:.2f}')} | "
                         f"{_range(c['speedup'], 1, '{:.2f}')} | "
                         f"{_range(c['speedup_cpu_time'], 1, '{:.2f}')} | " +
                         " | ".join(ratios) + " |")
        lines += ["", f"1 CPU against {n}: one generator thread pinned to each CPU, one veth "
                      "queue per CPU; speedup in CPU time: packets per CPU-second of the "
                      "sending threads (which run the datapath in softirq), the speedup free "
                      "CPUs would give."]
    lines += ["", f"Kernel {env['kernel']}, {env['cpu_model']} ({env['cpus']} CPUs), "
                  f"{env['xdp_mode']} XDP on veth, NAPI {env['napi']}, "
                  f"{env['packet_bytes']}-byte frames, generator: {env['generator']}; "
                  f"{env['trials']} trials of {env['trial_seconds']} s per datapath; "
                  f"C: {env['c_compiler']}, SIMD: {env['simd']}; machine load: "
                  f"loadavg {env['load']['loadavg_start'][0]:.2f} at the start, "
                  f"{env['load']['loadavg_end'][0]:.2f} at the end, all CPUs busy "
                  f"{100 * env['load']['busy_share']:.0f}% of the run (this bench included)."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> str | None:
    """Packets/s and ns/inference against model size, min-max bars; returns
    why there is no plot, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'xdpnn[bench]')"
    inf = r["inference"]
    size = [i["weight_bytes"] for i in inf]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))

    def bars(ax, xs, stats, label, scale=1.0, **kw):
        med = [s["median"] * scale for s in stats]
        err = [[m - s["min"] * scale for m, s in zip(med, stats)],
               [s["max"] * scale - m for m, s in zip(med, stats)]]
        ax.errorbar(xs, med, yerr=err, capsize=4, marker="o", label=label, **kw)

    by_name = {c["config"]: c for c in r["forwarding"]}
    bars(ax1, size, [by_name[i["model"]]["pps"] for i in inf], "forwarding + inference", 1e-6)
    for name, style in (("forward", "--"), ("reflect", ":")):
        p = by_name[name]["pps"]
        ax1.axhline(p["median"] * 1e-6, linestyle=style, color="gray",
                    label=f"{name} (no inference)")
        ax1.axhspan(p["min"] * 1e-6, p["max"] * 1e-6, color="gray", alpha=0.15)
    ax1.set(xscale="log", xlabel="model weight bytes", ylabel="Mpps received",
            title="Forwarding rate while classifying every packet")
    bars(ax2, size, [i["xdp_ns"] for i in inf], "XDP (BPF_PROG_TEST_RUN)")
    for b, label in BASELINES.items():
        if all(b in i["baselines"] for i in inf):
            bars(ax2, size, [i["baselines"][b]["ns"] for i in inf], label)
    ax2.set(xscale="log", yscale="log", xlabel="model weight bytes", ylabel="ns per inference",
            title="Cost of one inference")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    env = r["environment"]
    fig.suptitle(f"xdpnn bench: kernel {env['kernel']}, {env['cpu_model']}, "
                 f"{env['packet_bytes']}-byte frames, median of {env['trials']}, bars min-max",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write(r: dict, out_dir: Path) -> list[str]:
    """Writes bench.json, bench.md and bench.png; returns notes to show."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(r, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(r))
    why = plot(r, out_dir / "bench.png")
    return [why] if why else []
