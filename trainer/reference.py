"""The reference inference: it defines what the XDP program must compute.

Inputs are bits (0/1 arrays, bit 1 = +1).  For a layer with n inputs the
dot product of inputs x and weights w in ±1 form is ``a = n - 2 * d`` where
``d`` counts the positions where x and w differ (XNOR-popcount).  A hidden
neuron outputs 1 iff ``a >= threshold``; the output layer scores class k as
``out_scale[k] * a_k + out_bias[k]`` and the class is the first maximum
(ties go to the lowest class).  bpf/bnn.h is the kernel twin.
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


def scores(model: Model, bits: np.ndarray) -> np.ndarray:
    """Integer class scores, shape (N, classes), for a (N, inputs) batch."""
    bits = np.asarray(bits, dtype=np.uint8)
    if bits.ndim != 2 or bits.shape[1] != model.sizes[0]:
        raise ValueError(f"expected inputs of shape (N, {model.sizes[0]}), got {bits.shape}")
    h = bits
    for w, t in zip(model.weights[:-1], model.thresholds):
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
