"""`xdpnn bench`: the user-space baseline computes what the reference does,
and a quick run in namespaces of its own writes every documented key."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli import xdpnn
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model

# docs/benchmarks.md, "The JSON file": keep the two in step.
TOP_KEYS = {"schema", "started", "seconds", "environment", "forwarding", "inference"}
ENV_KEYS = {"kernel", "cpu_model", "cpus", "xdp_mode", "napi", "packet_bytes", "generator",
            "trials", "trial_seconds", "stats_seconds", "test_run_repeat", "baseline_inputs",
            "c_compiler"}
FORWARDING_KEYS = {"config", "kind", "model", "pps", "ratio_to_forward", "not_received",
                   "bpf_stats_ns_per_packet", "test_run_ns_per_packet"}
INFERENCE_KEYS = {"model", "weight_bytes", "xdp_ns", "c_single_ns", "c_batch_ns",
                  "numpy_batch_ns", "baselines_agree", "xdp_classified_every_request"}
SUMMARY_KEYS = {"median", "min", "max", "trials"}


@pytest.mark.parametrize("sizes", [[256, 32, 16, 2], [784, 64, 32, 10], [784, 256, 256, 10],
                                   [100, 3, 70, 5], [1024, 512, 1, 64], [64, 64, 64, 64, 64, 3]])
def test_c_baseline_equals_the_reference(sizes):
    from xdpnn.traffic.baseline import CBaseline
    model = random_model(sizes, seed=4)
    bits = np.random.default_rng(5).integers(0, 2, (500, sizes[0]), dtype=np.uint8)
    want = reference.predict(model, bits)
    c = CBaseline()
    try:
        for fn in ("bnn_each", "bnn_batch"):
            assert (c.runner(fn, model, bits)() == want).all(), fn
    finally:
        c.close()


@pytest.mark.netns
def test_bench_quick_writes_every_documented_key(tmp_path):
    r = xdpnn("-j", "bench", "--quick", "--out", tmp_path)
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
    # Inference costs more than plain forwarding, and more weights cost more.
    xdp = [i["xdp_ns"]["median"] for i in res["inference"]]
    assert xdp == sorted(xdp) and xdp[0] > res["forwarding"][0]["test_run_ns_per_packet"]["median"]
    md = (tmp_path / "bench.md").read_text()
    assert "plain forwarding" in md and "784-256-256-10" in md
    prefix = re.search(r"bench: (xdpnn-bench-\d+)-gen", r.stderr).group(1)
    assert not list(Path("/run/netns").glob(f"{prefix}-*"))  # cleaned up
