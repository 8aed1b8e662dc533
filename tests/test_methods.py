"""The hidden-layer methods of bpf/bnn.h (horizontal, vertical and vertical
in 32-bit lanes, see
docs/datapath.md) forced layer by layer: each must give the reference's class
on every input, whatever the codegen would have chosen.

Tier 1 checks the vertical layout's arithmetic in Python; tier 2 runs the
kernel (BPF_PROG_TEST_RUN) against trainer/reference.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

from xdpnn.loader import cost, layout, testrun
from xdpnn.trainer import reference
from xdpnn.trainer.model import random_model


@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 100, 1024])
def test_limits_fire_exactly_when_the_reference_does(n):
    """d < U (the kernel's comparison) iff n - 2d >= T, for every count d
    and thresholds from far below -n to far above n."""
    t = np.array(sorted({-2**31, 2**31 - 1, *range(-n - 3, n + 4)}), np.int64)
    words = layout.limits(t, n).reshape(layout.groups(t.size), layout.vbits(n))
    # Undo the lanes: plane b of neuron j is bit NN_SHIFT(j % 64) of word b of group j // 64.
    j = np.arange(t.size)
    shift = (j & 0x38) | (7 - (j & 7))
    planes = (words[j // 64][:, :] >> shift[:, None].astype(np.uint64)) & np.uint64(1)
    u = (planes.astype(np.int64) << np.arange(layout.vbits(n))).sum(axis=1)
    d = np.arange(n + 1)
    assert np.array_equal(d[None, :] < u[:, None], n - 2 * d[None, :] >= t[:, None])


def test_padding_lanes_never_fire():
    words = layout.limits(np.full(65, -2**31, np.int64), 10)
    planes = words.reshape(2, layout.vbits(10))
    shift = (np.arange(1, 64) & 0x38) | (7 - (np.arange(1, 64) & 7))
    assert not (planes[1][:, None] >> shift.astype(np.uint64) & np.uint64(1)).any()


def test_transposed_word_holds_one_input_bit_of_64_neurons():
    m = random_model([100, 70, 3], seed=4)
    w = m.weights[0]
    words = layout.transposed(w).reshape(2, 128)  # 2 groups, 2 input words of 64 positions
    for j in (0, 5, 63, 64, 69):
        lane = (j % 64 & 0x38) | (7 - (j % 64 & 7))
        for i in (0, 1, 8, 63, 64, 99):
            p = (i % 64 & 0x38) | (7 - (i % 64 & 7))  # input i's position in its word
            assert (int(words[j // 64, i // 64 * 64 + p]) >> lane) & 1 == w[j, i]


def test_codegen_goes_vertical_where_groups_are_full_enough():
    assert layout.choose_methods([256, 32, 16, 2]) == ("w", "h")
    assert layout.choose_methods([784, 64, 32, 10]) == ("v", "w")
    assert layout.choose_methods([784, 256, 256, 10]) == ("v", "v")
    # The switch (from the cost model's per-word costs, docs/benchmarks.md,
    # "Cost model"), for whole input words: vertical from 33 neurons in one
    # group (64 v_words against n h_words) and from 66 in two (128 against
    # n), so 65/128 < v/h < 33/64.
    ns = cost.coefficients()["ns"]
    assert 65 / 128 < ns["v_words"] / ns["h_words"] < 33 / 64
    assert layout.choose_methods([64, 33, 2]) == ("v",)
    assert layout.choose_methods([64, 65, 2]) == ("h",)  # a one-lane second group
    assert layout.choose_methods([64, 66, 2]) == ("v",)
    # 32-bit lanes (at most 32 neurons, 32 words per input word): only at
    # 32 neurons, where 32 w_words < 32 h_words (and < 64 v_words), while
    # 31 h_words < 32 w_words: 31/32 < w/h < 1.
    assert 31 / 32 < ns["w_words"] / ns["h_words"] < 1
    assert layout.choose_methods([64, 31, 2]) == ("h",)
    assert layout.choose_methods([64, 32, 2]) == ("w",)
    # A half-padding last input word halves a vertical layer's words (not
    # a vertical-32 one's): vertical from 17 neurons after a 32-neuron layer.
    assert layout.choose_methods([64, 32, 16, 2]) == ("w", "h")
    assert layout.choose_methods([64, 32, 17, 2]) == ("w", "v")
    # test_golden.py's switch shapes sit at it: refit coefficients that
    # move it must move them too.
    assert layout.choose_methods([64, 33, 31, 2]) == ("v", "h")
    assert layout.choose_methods([64, 65, 66, 2]) == ("h", "v")
    m = random_model([784, 64, 32, 10])
    assert "-DNN_L0_METHOD=1" in layout.cflags(m) and "-DNN_L1_METHOD=2" in layout.cflags(m)
    assert layout.model_words(m).size == layout.offsets(m.sizes)["MODEL_WORDS"]


def test_w_word_holds_input_bits_q_and_q_plus_32_of_32_neurons():
    m = random_model([100, 30, 3], seed=4)
    w = m.weights[0]
    words = layout.transposed_w(w).reshape(2, 32)  # 2 input words of 32 bit pairs
    for j in (0, 5, 17, 29):
        lane = (j & 0x38) | (7 - (j & 7))
        for i in (0, 1, 8, 31, 32, 40, 63, 64, 95, 99):
            p = (i % 64 & 0x38) | (7 - (i % 64 & 7))  # input i's position in its word
            got = int(words[i // 64, p % 32]) >> (lane + 32 * (p >= 32)) & 1
            assert got == w[j, i]
    assert layout.model_words(m, ("w",)).size == layout.offsets(m.sizes, ("w",))["MODEL_WORDS"]


def test_methods_are_checked():
    with pytest.raises(ValueError, match="per hidden layer"):
        layout.cflags(random_model([64, 8, 2]), methods=("v", "v"))
    with pytest.raises(ValueError):
        layout.offsets([64, 8, 2], methods=("x",))
    with pytest.raises(ValueError, match="layer 1 has 33 neurons, method w takes at most 32"):
        layout.cflags(random_model([64, 8, 33, 2]), methods=("w", "w"))


FORCED = [
    # sizes, methods per hidden layer, samples
    ([256, 32, 16, 2], "vv", 3000),
    ([784, 64, 32, 10], "vh", 3000),
    ([784, 64, 32, 10], "hv", 3000),
    ([100, 16, 4], "v", 3000),                      # inputs not a multiple of 64
    ([64, 1, 2], "v", 3000),                        # one hidden neuron
    ([1, 1, 2], "v", 200),                          # one input bit
    ([130, 65, 65, 3], "vv", 3000),                 # 65 neurons: a one-lane group
    ([777, 40, 20, 5], "vh", 3000),
    ([200, 64, 32, 16, 6], "vhv", 3000),
    ([300, 128, 64, 32, 16, 8], "vvvv", 3000),      # four hidden layers
    ([300, 128, 64, 32, 16, 8], "hvhv", 3000),
    ([1024, 512, 512, 10], "vv", 3000),
    ([1024, 512, 512, 512, 512, 64], "vvvv", 2000),  # the widest input, 4 layers, 64 classes
    # 32-bit lanes ("w", at most 32 neurons)
    ([256, 32, 16, 2], "wh", 3000),
    ([256, 32, 16, 2], "ww", 3000),
    ([784, 64, 32, 10], "vw", 3000),
    ([100, 16, 4], "w", 3000),                      # inputs not a multiple of 64
    ([64, 1, 2], "w", 3000),                        # one hidden neuron
    ([1, 1, 2], "w", 200),                          # one input bit
    ([96, 31, 2], "w", 3000),                       # half a word of padding
    ([777, 17, 29, 5], "ww", 3000),                 # odd sizes
    ([1024, 32, 2], "w", 3000),                     # counts up to 1024
    ([200, 64, 32, 16, 6], "vww", 3000),
]


@pytest.mark.root
@pytest.mark.parametrize("sizes,methods,samples", FORCED,
                         ids=[f"{'-'.join(map(str, s))}-{m}" for s, m, _ in FORCED])
def test_forced_method_equals_reference(sizes, methods, samples):
    samples = min(samples, int(os.environ.get("XDPNN_GOLDEN_SAMPLES_MAX", samples)))
    res = testrun.verify(random_model(sizes, seed=sum(sizes)), samples, seed=len(methods),
                         methods=tuple(methods))
    assert res["methods"] == methods
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 2 or sizes[0] == 1


def extreme(sizes, seed):
    """Thresholds at and beyond the ends of [-n, n]: neurons that always or
    never fire, and those that fire only for all or no mismatches."""
    m = random_model(sizes, seed=seed)
    rng = np.random.default_rng(seed)
    for l, t in enumerate(m.thresholds):
        n = sizes[l]
        picks = np.array([-2**31, -n - 1, -n, -n + 1, -n + 2, n - 2, n - 1, n, n + 1, n + 2,
                          2**31 - 1, 0, 1, -1], np.int64)
        extreme_ones = rng.random(t.size) < 0.5
        t[extreme_ones] = rng.choice(picks, int(extreme_ones.sum()))
    return m.validate()


EXTREME = [([64, 70, 9, 4], "hh"), ([64, 70, 9, 4], "vv"), ([5, 66, 3, 3], "hh"),
           ([5, 66, 3, 3], "vv"), ([64, 32, 9, 4], "ww"), ([5, 30, 3, 3], "ww")]


@pytest.mark.root
@pytest.mark.parametrize("sizes,methods", EXTREME,
                         ids=[f"{'-'.join(map(str, s))}-{m}" for s, m in EXTREME])
def test_extreme_thresholds_equal_reference(sizes, methods):
    res = testrun.verify(extreme(sizes, seed=sizes[1]), 3000, seed=3, methods=tuple(methods))
    assert res["mismatches"] == 0, res["examples"]


def one_neuron_probe(n_in: int, t: int, seed: int):
    """n_in-1-2 with class 0 iff the hidden neuron fires (out weights +1 and
    -1, scale 1, bias 0: score 0 = a, score 1 = -a), and threshold t."""
    m = random_model([n_in, 1, 2], seed=seed)
    m.thresholds[0][:] = t
    m.weights[1][:] = np.array([[1], [0]], np.uint8)
    m.out_scale[:], m.out_bias[:] = 1, 0
    return m.validate()


EXTREME_COUNTS = [("h", n) for n in (64, 130, 192, 256, 320, 1024)] + \
    [("w", n) for n in (33, 64, 130, 1024)]


@pytest.mark.root
@pytest.mark.parametrize("method,n_in", EXTREME_COUNTS,
                         ids=[f"{m}-{n}" for m, n in EXTREME_COUNTS])
def test_popcount_exact_at_extreme_counts(method, n_in):
    """The horizontal popcount adds partial counts of word pairs and
    reduces them once, in bytes up to 3 words a row and in 16-bit lanes
    from 4 (bpf/bnn.h xor_popcount): mismatch counts 0, 1, n - 1 and n (all
    bits) at row widths of 1 word, odd words, 3 words, 4 words (256: one
    more than a byte holds), 5 and 16, each read back exactly through a
    threshold at every one of those counts.  Method w (32-bit lanes) adds
    its two halves' counts at the end: the same counts, up to 1024, read
    back through the sum."""
    from xdpnn.loader import compile
    from xdpnn.traffic import packets

    rng = np.random.default_rng(n_in)
    model = one_neuron_probe(n_in, 0, seed=n_in)
    w = model.weights[0][0]
    inputs = {}
    for d in (0, 1, n_in // 2, n_in - 1, n_in):
        x = w.copy()
        x[rng.choice(n_in, d, replace=False)] ^= 1  # d mismatches exactly
        inputs[d] = x
    prog = compile.build(model, methods=(method,))
    try:
        runner = testrun.Runner(prog, model.input["port"])
        frames = {d: packets.request(reference.bytes_from_bits(x), model.input["port"])
                  for d, x in inputs.items()}
        for d_t in (0, 1, n_in - 1, n_in):
            probe = one_neuron_probe(n_in, n_in - 2 * d_t, seed=n_in)  # fires iff d <= d_t
            compile.write_model(prog.maps["nn_model"], probe, methods=(method,))
            for d, frame in frames.items():
                want = int(reference.predict(probe, inputs[d][None, :])[0])
                assert want == (0 if d <= d_t else 1)
                assert runner.run(frame).cls == want, (n_in, d_t, d)
    finally:
        prog.close()
