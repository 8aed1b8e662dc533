"""Tier 1: the reference semantics (trainer/reference.py) on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from xdpnn.trainer import reference
from xdpnn.trainer.model import Model, random_model


def model(weights, thresholds, scale, bias) -> Model:
    w = [np.array(x, np.uint8) for x in weights]
    return Model(sizes=[w[0].shape[1]] + [x.shape[0] for x in w], weights=w,
                 thresholds=[np.array(t, np.int64) for t in thresholds],
                 out_scale=np.array(scale, np.int64), out_bias=np.array(bias, np.int64)
                 ).validate()


def bits(s: str) -> np.ndarray:
    return np.array([int(c) for c in s], np.uint8)


# --- the ±1 dot product: a = n - 2 * popcount(x xor w) ----------------------

@pytest.mark.parametrize("x,w,a", [
    ("1", "1", 1),
    ("1", "0", -1),
    ("10110", "11010", 1),       # x xor w = 01100: d = 2, a = 5 - 4
    ("0000", "1111", -4),
    ("1111", "1111", 4),
    ("101010101", "111111111", 1),   # 9 inputs, d = 4
    ("101010101", "000000000", -1),  # d = 5
    ("1" * 13, "0" * 6 + "1" * 7, 1),
    ("1" * 65, "0" + "1" * 64, 63),
    ("0" * 100, "1" * 100, -100),
])
def test_dot_product_by_hand(x, w, a):
    assert reference.dot(bits(x)[None, :], bits(w)[None, :]).tolist() == [[a]]


def popcount_dot(x_row, w_row) -> int:
    n = len(x_row)
    x = int("".join(map(str, x_row)), 2)
    w = int("".join(map(str, w_row)), 2)
    return n - 2 * bin(x ^ w).count("1")


@pytest.mark.parametrize("n", [1, 7, 9, 13, 63, 64, 65, 100, 777, 1024])
def test_dot_product_equals_xor_popcount(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2, (20, n), dtype=np.uint8)
    w = rng.integers(0, 2, (5, n), dtype=np.uint8)
    want = [[popcount_dot(xr, wr) for wr in w] for xr in x]
    got = reference.dot(x, w)
    assert got.dtype == np.int64 and got.tolist() == want


# --- hidden layers: fire iff a >= T -----------------------------------------

def one_neuron(threshold) -> Model:
    """3 inputs -> 1 hidden neuron (weights 111) -> class = whether it fired."""
    return model([[[1, 1, 1]], [[0], [1]]], [[threshold]], [1, 1], [0, 0])


@pytest.mark.parametrize("threshold,x,fires", [
    (1, "110", True),    # a = 1 = T
    (1, "100", False),   # a = -1
    (2, "110", False),   # a = 1 = T - 1
    (-1, "100", True),
    (-1, "000", False),  # a = -3
    (3, "111", True),
    (4, "111", False),
    (-3, "000", True),
    (-(2**31), "000", True),
    (2**31 - 1, "111", False),
])
def test_hidden_neuron_fires_iff_dot_reaches_threshold(threshold, x, fires):
    assert reference.predict(one_neuron(threshold), bits(x)[None, :]).tolist() == [int(fires)]


# A 4-2-2 model computed by hand:
#   hidden: w = 1111, T = 0 and w = 1010, T = 2; output: w = 10 and w = 01.
TINY = model([[[1, 1, 1, 1], [1, 0, 1, 0]], [[1, 0], [0, 1]]], [[0, 2]], [1, 1], [0, 0])


@pytest.mark.parametrize("x,hidden_a,hidden,scores,cls", [
    ("1100", [0, 0], "10", [2, -2], 0),
    ("1010", [0, 4], "11", [0, 0], 0),   # tie: the lowest class
    ("0000", [-4, 0], "00", [0, 0], 0),
    ("0010", [-2, 2], "01", [-2, 2], 1),  # a = T fires
    ("1000", [-2, 2], "01", [-2, 2], 1),
    ("1110", [2, 2], "11", [0, 0], 0),
    ("0101", [0, -4], "10", [2, -2], 0),
    ("0111", [2, -2], "10", [2, -2], 0),
])
def test_tiny_model_by_hand(x, hidden_a, hidden, scores, cls):
    xb = bits(x)[None, :]
    assert reference.dot(xb, TINY.weights[0]).tolist() == [hidden_a]
    assert reference.scores(TINY, xb).tolist() == [scores]
    assert reference.predict(TINY, xb).tolist() == [cls]
    h = (reference.dot(xb, TINY.weights[0]) >= TINY.thresholds[0]).astype(np.uint8)
    assert h[0].tolist() == bits(hidden).tolist()


# --- the output layer: score = scale * a + bias, ties to the lowest class ---

def output_only(w_out, scale, bias) -> Model:
    """1 input copied by its hidden neuron (w = 1, T = 1), then the output layer."""
    return model([[[1]], [[w] for w in w_out]], [[1]], scale, bias)


@pytest.mark.parametrize("w_out,scale,bias,x,scores,cls", [
    ([1, 1, 1], [1, 1, 1], [0, 0, 0], 1, [1, 1, 1], 0),          # three-way tie
    ([0, 1, 1], [1, 1, 1], [0, 0, 0], 1, [-1, 1, 1], 1),         # tie between 1 and 2
    ([1, 0], [1, 1], [0, 0], 0, [-1, 1], 1),
    ([1, 0], [-1, -2], [0, 0], 1, [-1, 2], 1),                   # negative scale
    ([1, 0], [-3, 1], [0, 0], 0, [3, 1], 0),
    ([1, 0], [1, 1], [0, 3], 1, [1, 2], 1),                      # bias decides
    ([1, 0], [1, 1], [0, 2], 1, [1, 1], 0),                      # bias makes a tie
    ([1, 0, 1], [2**16, 1, -(2**16)], [-(2**40), 2**40, 2**40], 1,
     [2**16 - 2**40, 2**40 - 1, 2**40 - 2**16], 1),
])
def test_output_scores_by_hand(w_out, scale, bias, x, scores, cls):
    m = output_only(w_out, scale, bias)
    xb = np.array([[x]], np.uint8)
    assert reference.scores(m, xb).tolist() == [scores]
    assert reference.predict(m, xb).tolist() == [cls]


def slow_predict(m: Model, x_row) -> int:
    """The semantics written out with Python integers, one neuron at a time."""
    h = list(x_row)
    for w, t in zip(m.weights[:-1], m.thresholds):
        h = [int(popcount_dot(h, w_row) >= int(tj)) for w_row, tj in zip(w, t)]
    scores = [int(s) * popcount_dot(h, w_row) + int(b)
              for w_row, s, b in zip(m.weights[-1], m.out_scale, m.out_bias)]
    return scores.index(max(scores))


@pytest.mark.parametrize("sizes", [[13, 5, 4], [100, 7, 3], [64, 1, 2], [777, 9, 6, 2],
                                   [65, 33, 17, 9, 5, 64]])
def test_predict_equals_integer_twin(sizes):
    m = random_model(sizes, seed=sum(sizes))
    x = np.random.default_rng(7).integers(0, 2, (60, sizes[0]), dtype=np.uint8)
    assert reference.predict(m, x).tolist() == [slow_predict(m, row) for row in x]


def test_scores_reject_wrong_input_width():
    with pytest.raises(ValueError, match=r"expected inputs of shape \(N, 4\), got \(1, 5\)"):
        reference.scores(TINY, np.zeros((1, 5), np.uint8))


# --- bit order: bit i is bit (7 - i % 8) of byte i // 8 ---------------------

@pytest.mark.parametrize("data,n,want", [
    (b"\x80", 8, "10000000"),
    (b"\x01", 8, "00000001"),
    (b"\xa5", 8, "10100101"),
    (b"\x80\x01", 16, "1000000000000001"),
    (b"\xff\x80", 9, "111111111"),
    (b"\x0f\xf0\xaa", 20, "00001111111100001010"),
    (b"\xc0", 2, "11"),
])
def test_bits_from_bytes_by_hand(data, n, want):
    assert reference.bits_from_bytes(data, n).tolist() == bits(want).tolist()


@pytest.mark.parametrize("want,data", [
    ("1", b"\x80"),
    ("00000001", b"\x01"),
    ("000000011", b"\x01\x80"),
    ("101", b"\xa0"),
    ("", b""),
])
def test_bytes_from_bits_by_hand(want, data):
    assert reference.bytes_from_bits(bits(want)) == data


@pytest.mark.parametrize("n", [1, 5, 8, 13, 64, 100, 777])
def test_bit_order_rule_and_round_trip(n):
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, (n + 7) // 8, dtype=np.uint8).tobytes()
    got = reference.bits_from_bytes(data, n)
    assert got.tolist() == [(data[i // 8] >> (7 - i % 8)) & 1 for i in range(n)]
    x = rng.integers(0, 2, n, dtype=np.uint8)
    packed = reference.bytes_from_bits(x)
    assert len(packed) == (n + 7) // 8
    assert np.array_equal(reference.bits_from_bytes(packed, n), x)
