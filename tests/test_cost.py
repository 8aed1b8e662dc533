"""The cost model (loader/cost.py): its arithmetic and what `model show`
prints from it (tier 1), and its verifier-instruction predictions against
the programs the kernel loads (tier 2; instruction counts do not depend on
the machine's load, unlike ns)."""
import json

import pytest

from cli import xdpnn
from xdpnn.loader import bpf_sys, compile, cost, layout
from xdpnn.trainer.model import random_model


def test_coefficients_name_their_machine_and_every_feature():
    c = cost.coefficients()
    assert c["machine"]["cpu_model"] and c["machine"]["measured"]
    names = set(cost.features([8, 8, 2], ("h",)))
    assert set(c["ns"]) == names and set(c["verified_insns"]) == names


@pytest.mark.parametrize("sizes", [[256, 32, 16, 2], [784, 64, 32, 10], [784, 256, 256, 10],
                                   [1024, 512, 512, 512, 512, 64], [1, 1, 2]])
def test_prediction_adds_up_layer_by_layer(sizes):
    p = cost.predict(sizes)
    assert p.methods == layout.choose_methods(sizes)
    assert [c.method for c in p.layers] == list(p.methods) + ["out"]
    assert p.ns == pytest.approx(p.fixed_ns + sum(c.ns for c in p.layers))
    # The linear model is the fit's own features times the coefficients.
    c = cost.coefficients()
    f = cost.features(sizes, p.methods)
    assert p.ns == pytest.approx(sum(c["ns"][k] * v for k, v in f.items()))
    assert p.insns == pytest.approx(sum(c["verified_insns"][k] * v for k, v in f.items()))
    assert all(layer.ns > 0 for layer in p.layers) and p.ns > 0


def test_words_per_method():
    assert cost.layer_words(784, 64, "h") == 64 * 13
    assert cost.layer_words(1024, 65, "v") == 2 * 64 * 16  # a group pays for its padding lanes
    # 784 = 12 words and 16 bits: the last word's upper half is skipped.
    assert cost.layer_words(784, 65, "v") == 2 * (64 * 13 - 32)
    assert cost.layer_words(800, 64, "v") == 64 * 13 - 32  # 12 words and 32 bits: half
    assert cost.layer_words(820, 64, "v") == 64 * 13  # 12 words and 52 bits: a whole word
    assert cost.layer_words(256, 10, "out") == 40
    assert cost.layer_words(784, 32, "w") == 32 * 13  # two input bits a word, no half tail


def test_more_weights_cost_more_and_forced_methods_are_predicted():
    assert cost.predict([784, 256, 256, 10]).ns > cost.predict([784, 64, 32, 10]).ns \
        > cost.predict([256, 32, 16, 2]).ns
    # The codegen's choice is the cheaper method where the choice is clear.
    assert cost.predict([1024, 256, 2], "v").ns < cost.predict([1024, 256, 2], "h").ns
    assert cost.predict([1024, 8, 2], "h").ns < cost.predict([1024, 8, 2], "v").ns


def test_model_show_prints_the_prediction(tmp_path):
    path = tmp_path / "m.npz"
    assert xdpnn("model", "random", "784-64-32-10", "--out", path).returncode == 0
    r = xdpnn("model", "show", path)
    assert r.returncode == 0, r.stderr
    p = cost.predict([784, 64, 32, 10])
    lines = r.stdout.splitlines()
    assert lines[4].startswith(f"  predicted cost: {p.ns:.0f} ns per inference")
    assert lines[6:] == [f"    layer 0 784-64 vertical: {p.layers[0].ns:.0f} ns (800 words)",
                         f"    layer 1 64-32 vertical-32: {p.layers[1].ns:.0f} ns (32 words)",
                         f"    layer 2 32-10 output: {p.layers[2].ns:.0f} ns (10 words)"]
    info = json.loads(xdpnn("-j", "model", "show", path).stdout)["predicted"]
    assert info["methods"] == "vw" and info["ns"] == round(p.ns)
    assert [layer["method"] for layer in info["layers"]] == ["v", "w", "out"]


@pytest.mark.root
@pytest.mark.parametrize("sizes,methods", [([256, 32, 16, 2], None), ([784, 64, 32, 10], None),
                                           ([300, 100, 40, 5], "vh"), ([300, 100, 40, 5], "hv")])
def test_predicted_verifier_instructions_match_the_loaded_program(sizes, methods):
    """Within 15%: the fit's error on shapes it has not seen (one build
    each: verified counts do not depend on the load, so this can fail only
    if the code or the coefficients drift)."""
    prog = compile.build(random_model(sizes, seed=1), methods=methods)
    try:
        got = bpf_sys.prog_info(prog.prog_fd).verified_insns
    finally:
        prog.close()
    assert cost.predict(sizes, methods).insns == pytest.approx(got, rel=0.15)
