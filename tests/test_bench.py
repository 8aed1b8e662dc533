"""`xdpnn bench`: every user-space baseline computes what the reference does,
and a quick run in namespaces of its own writes every documented key.
Speed is measured by the bench; nothing here asserts a timing."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cli import xdpnn
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model

# docs/benchmarks.md, "The JSON file": keep the two in step.
TOP_KEYS = {"schema", "started", "seconds", "environment", "forwarding", "inference",
            "scaling"}
ENV_KEYS = {"kernel", "cpu_model", "cpus", "xdp_mode", "napi", "packet_bytes", "generator",
            "trials", "trial_seconds", "stats_seconds", "test_run_repeat", "baseline_inputs",
            "baseline_seconds", "c_compiler", "simd", "load"}
FORWARDING_KEYS = {"config", "kind", "model", "pps", "ratio_to_forward", "not_received",
                   "bpf_stats_ns_per_packet", "test_run_ns_per_packet"}
INFERENCE_KEYS = {"model", "weight_bytes", "xdp_ns", "baselines", "baselines_agree",
                  "fastest_scalar", "fastest", "xdp_over_fastest_scalar", "xdp_over_fastest",
                  "xdp_classified_every_request"}
SCALING_KEYS = {"config", "cpus", "pps_1_cpu", "pps_2_cpus", "speedup",
                "pps_per_cpu_second_1_cpu", "pps_per_cpu_second_2_cpus", "speedup_cpu_time"}
SUMMARY_KEYS = {"median", "min", "max", "trials"}


@pytest.fixture(scope="module")
def baselines():
    from xdpnn.traffic.baseline import CBaselines
    c = CBaselines()
    yield c
    c.close()


# Awkward shapes: inputs not a multiple of 64, one hidden neuron, 4 hidden
# layers, 64 classes, the largest input, rows of one word.
@pytest.mark.parametrize("sizes", [[256, 32, 16, 2], [784, 64, 32, 10], [784, 256, 256, 10],
                                   [100, 3, 70, 5], [1024, 512, 1, 64], [64, 64, 64, 64, 64, 3],
                                   [65, 1, 64], [130, 200, 129, 100, 63, 64], [8, 2, 2]])
def test_c_baselines_equal_the_reference(baselines, sizes):
    model = random_model(sizes, seed=4)
    bits = np.random.default_rng(5).integers(0, 2, (500, sizes[0]), dtype=np.uint8)
    want = reference.predict(model, bits)
    runners = baselines.runners(model, bits)  # checks each one itself, too
    assert {"c_fixed", "c_generic", "numpy_batch"} <= set(runners)
    for name, r in runners.items():
        assert (r.call(1) == want).all(), name
        assert (r.call(2) == want).all(), name  # a second pass over the inputs


def test_every_simd_build_this_cpu_runs_equals_the_reference(baselines):
    """AVX-512 and AVX2 where the CPU has each, not only the one the bench picks."""
    from xdpnn.traffic import baseline
    isas = list(baselines.isas)
    if not isas:
        pytest.skip("the CPU has neither AVX-512 VPOPCNTDQ nor AVX2")
    for sizes in ([784, 256, 256, 10], [100, 3, 70, 5], [1024, 512, 1, 64],
                  [130, 200, 129, 100, 63, 64]):
        model = random_model(sizes, seed=6)
        bits = np.random.default_rng(7).integers(0, 2, (300, sizes[0]), dtype=np.uint8)
        want = reference.predict(model, bits)
        for isa in isas:
            baselines.isas = [isa]
            try:
                r = baselines.runners(model, bits)["c_simd"]
            finally:
                baselines.isas = isas
            assert baselines.simd == isa[0] and isa[0] in r.build
            assert (r.call(1) == want).all(), (sizes, isa[0])
    assert {i[0] for i in isas} <= {i[0] for i in baseline.SIMD_ISAS}


def test_a_baseline_that_disagrees_is_an_error(baselines, monkeypatch):
    from xdpnn.loader.errors import MismatchError
    from xdpnn.traffic import baseline
    model = random_model([100, 8, 4], seed=1)
    bits = np.random.default_rng(2).integers(0, 2, (50, 100), dtype=np.uint8)
    monkeypatch.setattr(baseline.reference, "predict", lambda m, b: np.full(len(b), -1))
    with pytest.raises(MismatchError, match="disagrees with the reference"):
        baselines.runners(model, bits)


@pytest.mark.netns
def test_bench_quick_writes_every_documented_key(tmp_path):
    prefix = f"xh1-bench-{os.getpid()}"
    r = xdpnn("-j", "bench", "--quick", "--netns-prefix", prefix, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads((tmp_path / "bench.json").read_text())
    assert set(res) == TOP_KEYS and set(res["environment"]) == ENV_KEYS
    configs = [c["config"] for c in res["forwarding"]]
    assert configs == ["forward", "reflect", "256-32-16-2", "784-64-32-10", "784-256-256-10"]
    for c in res["forwarding"]:
        assert set(c) == FORWARDING_KEYS
        for key in ("pps", "ratio_to_forward", "bpf_stats_ns_per_packet",
                    "test_run_ns_per_packet"):
            assert set(c[key]) == SUMMARY_KEYS and len(c[key]["trials"]) == 5
            assert c[key]["min"] <= c[key]["median"] <= c[key]["max"]
        assert c["pps"]["min"] > 0
    for i in res["inference"]:
        assert set(i) == INFERENCE_KEYS
        assert i["baselines_agree"] and i["xdp_classified_every_request"]
        assert {"c_fixed", "c_generic", "numpy_batch"} <= set(i["baselines"])
        assert ("c_simd" in i["baselines"]) == (res["environment"]["simd"] in
                                                ("avx512-vpopcntdq", "avx2"))
        for b in i["baselines"].values():
            assert set(b["ns"]) == SUMMARY_KEYS and len(b["ns"]["trials"]) == 5
        assert i["baselines"][i["fastest_scalar"]]["kind"] == "scalar"
        medians = {k: b["ns"]["median"] for k, b in i["baselines"].items()}
        assert medians[i["fastest"]] == min(medians.values())
        for key in ("xdp_over_fastest_scalar", "xdp_over_fastest"):
            assert set(i[key]) == SUMMARY_KEYS and i[key]["min"] > 0
    # Inference costs more than plain forwarding, and more weights cost more.
    xdp = [i["xdp_ns"]["median"] for i in res["inference"]]
    assert xdp == sorted(xdp) and xdp[0] > res["forwarding"][0]["test_run_ns_per_packet"]["median"]
    md = (tmp_path / "bench.md").read_text()
    assert "plain forwarding" in md and "784-256-256-10" in md and "XDP / fastest scalar" in md
    assert f"bench: {prefix}-gen" in r.stderr
    assert set(res["environment"]["load"]) == {"loadavg_start", "loadavg_end", "busy_share"}
    # 1 CPU against 2, side by side, where the machine has 2 CPUs.
    if len(os.sched_getaffinity(0)) >= 2:
        assert [c["config"] for c in res["scaling"]] == [
            "forward", "256-32-16-2", "784-64-32-10", "784-256-256-10"]
        for c in res["scaling"]:
            assert set(c) - {"ratio_to_forward_1_cpu", "ratio_to_forward_2_cpus"} == SCALING_KEYS
            assert ("ratio_to_forward_1_cpu" in c) == (c["config"] != "forward")
            assert c["pps_1_cpu"]["min"] > 0 and c["pps_2_cpus"]["min"] > 0
            assert len(c["speedup"]["trials"]) == 5
        assert "Mpps on 2 CPUs" in md
    assert not list(Path("/run/netns").glob(f"{prefix}-*"))  # cleaned up


SERVING_KEYS = {"model", "shape", "servers", "ratios", "ratios_note", "setup"}


@pytest.mark.netns
@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root")
def test_bench_serving_writes_every_documented_key(tmp_path):
    out = tmp_path / "serving"
    r = xdpnn("-j", "bench", "--serving", "--quick", "--trials", "2", "--seconds", "0.2",
              "--shape", "256-32-16-2", "--out", out, check=True)
    doc = json.loads(r.stdout)
    assert doc == json.loads((out / "bench.json").read_text())
    s = doc["serving"]
    assert set(s) == SERVING_KEYS and s["shape"] == "256-32-16-2"
    for kind in ("xdp", "user_c"):
        v = s["servers"][kind]
        assert v["peak"] > 0 and set(v["loads"]) == {"0.1", "0.5", "0.9"}
        for live in ("live", "live_1cpu"):  # the live generator, its replies all right
            assert set(v[live]) == {"rate", "offered", "unanswered", "sent"}
            assert v[live]["rate"]["median"] > 0 and v[live]["sent"] > 0
        for x in v["loads"].values():
            assert set(x) == {"rate", "lost", "sent", "p50", "p90", "p99"}
            assert set(x["p50"]) == SUMMARY_KEYS and len(x["p50"]["trials"]) == 2
            assert x["sent"] > 0
    assert {"peak_flood", "peak_window", "peak_live", "peak_live_1cpu"} <= set(s["ratios"])
    assert s["setup"]["server_priority"].startswith("SCHED_FIFO")
    assert "| XDP (attach --serve) |" in (out / "bench.md").read_text()


@pytest.mark.parametrize("section", [[], ["--serving"], ["--stages"]])
def test_a_bad_netns_prefix_is_one_line_for_every_section(tmp_path, section):
    """Checked before any section starts: nothing made, nothing measured."""
    r = xdpnn("bench", *section, "--quick", "--netns-prefix", "s12/x", "--out", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--netns-prefix 's12/x'" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
    long = "x" * 251  # 255 bytes with -cli, 256 with -sink: too long for forwarding's names
    r = xdpnn("bench", *section, "--netns-prefix", long, "--out", tmp_path / "o")
    assert r.returncode == 2 and "--netns-prefix" in r.stderr, r.stderr


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_bench_serving_uses_the_netns_prefix(tmp_path):
    """The serving section's client-server pair is <prefix>-cli and -srv,
    seen in /run/netns while it runs, and gone after."""
    import threading
    import time
    prefix = f"s12x-{os.getpid()}"
    done: list = []
    run = threading.Thread(target=lambda: done.append(xdpnn(
        "-j", "bench", "--serving", "--quick", "--trials", "1", "--seconds", "0.2",
        "--shape", "256-32-16-2", "--netns-prefix", prefix, "--out", tmp_path)))
    run.start()
    seen: set = set()
    while run.is_alive():
        seen |= {p.name for p in Path("/run/netns").glob(f"{prefix}-*")}
        time.sleep(0.05)
    run.join()
    assert done[0].returncode == 0, done[0].stderr
    assert seen == {f"{prefix}-cli", f"{prefix}-srv"}, seen
    assert f"bench serving: {prefix}-cli [c0] <-> [s0] {prefix}-srv" in done[0].stderr
    assert json.loads(done[0].stdout)["serving"]["shape"] == "256-32-16-2"
    assert not list(Path("/run/netns").glob(f"{prefix}-*"))


STAGES_MODEL_KEYS = {"model", "calibration", "plan", "one_cpu_stages", "speedup",
                     "speedup_cpu_time", "predicted_speedup", "one_cpu", "two_cpus"}
STAGES_RUN_KEYS = {"pps", "sent", "counted", "received", "lost", "cpumap_drops", "veth_drops",
                   "classes_exact", "cpu0_ns_per_frame", "cpu1_ns_per_frame",
                   "ksoftirqd_share", "pps_cpu_time", "predicted_pps",
                   "predicted_compute_only_pps", "measured_over_predicted",
                   "cpu_time_over_predicted"}


@pytest.mark.netns
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs CPUs 0 and 1")
def test_bench_stages_quick(tmp_path):
    """--stages --quick: one CPU against two CPUMAP stages for the calibration
    model and 784-64-32-10; every documented key, counts that add up, the
    reference's class counts on a full cycle of inputs, the planner's cut."""
    from xdpnn.loader import plan
    from xdpnn.traffic import bench_stages
    prefix = f"xh1-sbench-{os.getpid()}"
    r = xdpnn("-j", "bench", "--stages", "--quick", "--netns-prefix", prefix, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads((tmp_path / "bench.json").read_text())
    assert res["schema"] == "xdpnn-bench-stages/1"
    assert set(res) == {"schema", "started", "seconds", "environment", "forward", "constants",
                        "models"}
    assert set(res["constants"]) == {"path_ns", "handoff_ns", "next_ns", "calibration_model"}
    assert [m["model"] for m in res["models"]] == [bench_stages.CALIBRATION, "784-64-32-10"]
    assert res["forward"]["pps"]["min"] > 0
    for m in res["models"]:
        assert set(m) == STAGES_MODEL_KEYS
        sizes = [int(x) for x in m["model"].split("-")]
        p = plan.make(random_model(sizes, seed=1), None, 2, split=True, carry="cpumap")
        assert m["plan"]["stages"] == [plan.row_cut(r) for r in p["stages"]]
        assert m["one_cpu_stages"] is None  # both fit one program
        for key in ("one_cpu", "two_cpus"):
            x = m[key]
            assert set(x) == STAGES_RUN_KEYS, key
            assert x["classes_exact"] is True, (m["model"], key)
            assert len(x["pps"]["trials"]) == 3 and x["pps"]["min"] > 0
            assert 0 < x["counted"] <= x["sent"] and x["lost"] == x["sent"] - x["counted"]
            # the last stage forwards what it counts (a full veth ring may drop some)
            assert x["counted"] - x["veth_drops"] <= x["received"] <= x["counted"]
            assert x["predicted_pps"] > 0 and x["pps_cpu_time"]["min"] > 0
        assert m["one_cpu"]["cpumap_drops"] is None and m["one_cpu"]["cpu1_ns_per_frame"] is None
        two = m["two_cpus"]
        assert two["cpumap_drops"] <= two["lost"] and two["cpu1_ns_per_frame"]["min"] > 0
        assert m["predicted_speedup"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "two CPUMAP stages" in md and "784-64-32-10" in md
    assert not list(Path("/run/netns").glob(f"{prefix}-*"))
