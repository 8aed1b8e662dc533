"""From a trained BinaryNet to a model file: batch norm folded into integers.

A hidden unit computes the integer a = n - 2*popcount(x ^ w) and the
trainer fires it iff ``bn_fires(a)``: gamma * (a - mean) / sqrt(var + eps)
+ beta >= 0.  Every float operation in that expression is monotone, so for
gamma > 0 the unit fires exactly for a >= some integer T, and for gamma < 0
exactly for a <= some integer M.  Instead of solving for T with float
division (which can land one off at a tie), the fold evaluates the
trainer's own ``bn_fires`` at every value a can take, -n..n, and reads the
threshold off.  The result is exact by construction, ties included:

  gamma > 0:  fires iff a >= T                   -> threshold T
  gamma < 0:  fires iff a <= M  <=>  -a >= -M    -> flip the unit's weight bits
              (that negates a) and threshold -M
  gamma = 0:  constant (beta >= 0: always, -n; else never, n + 1)
  var = 0:    eps keeps the division finite; the same search applies

The output layer's batch norm is the affine s*a + b with s = gamma /
sqrt(var + eps) and b = beta - s*mean.  The model format scores classes
with integers, so ``quantize_output`` scales both by 2^p and rounds; the
trainer's binarized network is *defined* to use those integers, which makes
its predictions and the exported model's the same computation.
"""
from __future__ import annotations

import numpy as np

from xdpnn.trainer.model import BIAS_RANGE, SCALE_RANGE, Model


def bn_fires(a: np.ndarray, gamma, beta, mean, var, eps: float) -> np.ndarray:
    """Whether hidden units fire for dot products a: the trainer's definition."""
    return gamma * ((a - mean) / np.sqrt(var + eps)) + beta >= 0


def fold_hidden(weight_bits: np.ndarray, gamma, beta, mean, var, eps: float,
                value_max: int = 1):
    """(weight bits, int64 thresholds) of one hidden layer with its batch norm
    folded.  value_max: the largest |input|, 1 for bits; a multi-bit first
    layer's a ranges over -value_max * n .. value_max * n."""
    n = weight_bits.shape[1] * value_max
    a = np.arange(-n, n + 1, dtype=np.float64)[:, None]
    bits = weight_bits.copy()
    thresholds = np.empty(weight_bits.shape[0], np.int64)
    never, always = n + 1, -n
    for j in range(weight_bits.shape[0]):
        # one unit at a time: a multi-bit layer's a takes up to 65,281 values
        f = bn_fires(a[:, 0], gamma[j], beta[j], mean[j], var[j], eps)
        if not f.any():
            thresholds[j] = never
        elif f.all():
            thresholds[j] = always
        elif gamma[j] > 0:
            thresholds[j] = int(a[np.argmax(f), 0])            # first a that fires
        else:
            last = int(a[len(f) - 1 - np.argmax(f[::-1]), 0])  # last a that fires
            bits[j] ^= 1
            thresholds[j] = -last
    return bits, thresholds


def quantize_output(gamma, beta, mean, var, eps: float):
    """(out_scale, out_bias) int64: the output affine times 2^p, rounded.

    p is the largest power that keeps every scale and bias inside the
    format's limits, so the rounding error is as small as the format allows.
    """
    s = gamma / np.sqrt(var + eps)
    b = beta - s * mean
    limits = []
    if np.abs(s).max() > 0:
        limits.append(np.log2((SCALE_RANGE[1] - 1) / np.abs(s).max()))
    if np.abs(b).max() > 0:
        limits.append(np.log2((BIAS_RANGE[1] - 1) / np.abs(b).max()))
    p = int(np.floor(min(limits))) if limits else 0
    p = min(p, 40)
    return (np.rint(s * 2.0 ** p).astype(np.int64), np.rint(b * 2.0 ** p).astype(np.int64))


def integer_scores(a: np.ndarray, out_scale, out_bias) -> np.ndarray:
    """Class scores from output dot products, as trainer.reference computes them."""
    return out_scale * a.astype(np.int64) + out_bias


def export(layers: list[dict], eps: float, input_: dict, classes: list[str],
           provenance: dict) -> Model:
    """A model file from trained layers.

    Each layer is a dict with the latent weights "w" (out, in) and its batch
    norm "gamma", "beta", "mean", "var"; weight bit = latent weight >= 0
    (the trainer's sign, with sign(0) = +1).
    """
    weights, thresholds = [], []
    # A multi-bit first layer's dot products reach the largest |value| times n.
    k, signed = input_.get("bits", 1), input_.get("signed", False)
    first_max = 1 if k == 1 else 2 ** (k - 1) if signed else 2 ** k - 1
    for l, layer in enumerate(layers[:-1]):
        bits, t = fold_hidden((layer["w"] >= 0).astype(np.uint8), layer["gamma"], layer["beta"],
                              layer["mean"], layer["var"], eps, first_max if l == 0 else 1)
        weights.append(bits)
        thresholds.append(t)
    last = layers[-1]
    weights.append((last["w"] >= 0).astype(np.uint8))
    out_scale, out_bias = quantize_output(last["gamma"], last["beta"], last["mean"],
                                          last["var"], eps)
    sizes = [layers[0]["w"].shape[1]] + [layer["w"].shape[0] for layer in layers]
    return Model(sizes=sizes, weights=weights, thresholds=thresholds, out_scale=out_scale,
                 out_bias=out_bias, input=input_, classes=list(classes),
                 provenance=provenance).validate()
