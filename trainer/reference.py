"""The reference inference: it defines what the XDP program must compute.

Inputs are bits (0/1 arrays, bit 1 = +1).  For a layer with n inputs the
dot product of inputs x and weights w in ±1 form is ``a = n - 2 * d`` where
``d`` counts the positions where x and w differ (XNOR-popcount).  A hidden
neuron outputs 1 iff ``a >= threshold``; the output layer scores class k as
``out_scale[k] * a_k + out_bias[k]`` and the class is the first maximum
(ties go to the lowest class).  bpf/bnn.h is the kernel twin.

Multi-bit models (input.bits = k > 1) take one integer per input instead of
a bit: the first layer's pre-activation is the plain integer dot product
``a = sum_i x_i * w_i`` with w_i = ±1, compared with the threshold as in any
hidden layer; bpf/bnn_multibit.h computes it from the bit planes of x
(``planes_dot`` below is that rearrangement, docs/model-format.md).
"""
from __future__ import annotations

import numpy as np

from xdpnn.trainer.model import Model


def dot(bits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """±1 dot products of a batch of bit rows with each weight row, as int64.

    Computed as a float matrix product of ±1 values: every partial sum is an
    integer below 2**53, so the result is exact (and uses BLAS).
    """
    x = bits.astype(np.float64) * 2 - 1
    w = weights.astype(np.float64) * 2 - 1
    return np.rint(x @ w.T).astype(np.int64)


def value_dot(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Integer inputs (|x| <= 255) times ±1 weights, as int64.  Exact in
    floating point: every partial sum is below 255 * 1024 in magnitude."""
    w = weights.astype(np.float64) * 2 - 1
    return np.rint(x.astype(np.float64) @ w.T).astype(np.int64)


def plane_weights(k: int, signed: bool) -> np.ndarray:
    """c_p with x = sum_p c_p * (bit p of x): 2^p, and -2^(k-1) for the sign
    plane of a signed (two's complement) value."""
    c = 2 ** np.arange(k, dtype=np.int64)
    if signed:
        c[-1] = -c[-1]
    return c


def planes_dot(x: np.ndarray, weights: np.ndarray, k: int, signed: bool) -> np.ndarray:
    """value_dot computed as the kernel does: with d_p = popcount(plane_p XOR w)
    and P = popcount(w), plane p's ±1-weighted sum is P - d_p, so
    a = C * P - sum_p c_p d_p with C = sum_p c_p."""
    c = plane_weights(k, signed)
    raw = np.asarray(x, np.int64) & (2 ** k - 1)  # two's complement bits of x
    w = weights.astype(np.int64)
    d = np.stack([((raw[:, None, :] >> p) & 1) ^ w[None, :, :] for p in range(k)]).sum(-1)
    return int(c.sum()) * w.sum(1) - np.tensordot(c, d, axes=1)


def check_inputs(model: Model, x: np.ndarray) -> np.ndarray:
    """The batch as int64: bits (0/1) for a binary model, values in the
    k-bit range for a multi-bit one."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != model.sizes[0]:
        raise ValueError(f"expected inputs of shape (N, {model.sizes[0]}), got {x.shape}")
    lo, hi = value_range(model)
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"expected input values in [{lo}, {hi}], got [{x.min()}, {x.max()}]")
    return x.astype(np.int64)


def value_range(model: Model) -> tuple[int, int]:
    k = model.input_bits
    if k == 1:
        return 0, 1
    return (-(2 ** (k - 1)), 2 ** (k - 1) - 1) if model.input_signed else (0, 2 ** k - 1)


def scores(model: Model, x: np.ndarray) -> np.ndarray:
    """Integer class scores, shape (N, classes), for a (N, inputs) batch of
    bits (binary inputs) or values (multi-bit inputs)."""
    x = check_inputs(model, x)
    if model.input_bits > 1:
        h = (value_dot(x, model.weights[0]) >= model.thresholds[0]).astype(np.uint8)
        layers = zip(model.weights[1:-1], model.thresholds[1:])
    else:
        h = x.astype(np.uint8)
        layers = zip(model.weights[:-1], model.thresholds)
    for w, t in layers:
        h = (dot(h, w) >= t).astype(np.uint8)
    return model.out_scale * dot(h, model.weights[-1]) + model.out_bias


def predict(model: Model, bits: np.ndarray) -> np.ndarray:
    """The class of each input row (argmax, ties to the lowest class)."""
    return np.argmax(scores(model, bits), axis=1)


def bits_from_bytes(data: bytes, n_bits: int) -> np.ndarray:
    """Input bits from bytes: bit i is bit (7 - i % 8) of byte i // 8."""
    return np.unpackbits(np.frombuffer(data, np.uint8))[:n_bits]


def bytes_from_bits(bits: np.ndarray) -> bytes:
    """The inverse: the shortest byte string carrying these bits, zero padded."""
    return np.packbits(np.asarray(bits, np.uint8)).tobytes()


def values_from_bytes(data: bytes, n: int, k: int, signed: bool) -> np.ndarray:
    """Multi-bit inputs from bytes: input i is the low k bits of byte i,
    unsigned, or as a k-bit two's complement number; higher bits are ignored."""
    v = np.frombuffer(data, np.uint8)[:n].astype(np.int64) & (2 ** k - 1)
    return v - ((v >> (k - 1)) << k) if signed else v


def bytes_from_values(values: np.ndarray, k: int) -> bytes:
    """The inverse: one byte per value, its k-bit two's complement bits."""
    return (np.asarray(values, np.int64) & (2 ** k - 1)).astype(np.uint8).tobytes()


def model_input(model: Model, raw_bits: np.ndarray) -> np.ndarray:
    """The model's input from the bits the datapath reads (Model.raw_bits of
    them, features.model_input): the bits themselves, or a value per byte."""
    if model.input_bits == 1:
        return raw_bits
    return values_from_bytes(bytes_from_bits(raw_bits), model.sizes[0], model.input_bits,
                             model.input_signed)


def random_inputs(model: Model, rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniformly random inputs over the model's input range."""
    lo, hi = value_range(model)
    return rng.integers(lo, hi + 1, (n, model.sizes[0])).astype(
        np.uint8 if model.input_bits == 1 else np.int64)


def input_bytes(model: Model, x: np.ndarray) -> bytes:
    """The request payload carrying one input row."""
    return bytes_from_bits(x) if model.input_bits == 1 else bytes_from_values(x, model.input_bits)
