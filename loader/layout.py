"""From a model to what the XDP program is built with: compiler flags for its
shape and the flat array of u64 words that fills the model's map.

This is the only place that knows where each layer lives in the map value;
bpf/bnn.h reads the offsets from the -D flags made here.
"""
from __future__ import annotations

import numpy as np

from xdpnn.bpf.shared import INPUT_MODES as INPUT_MODE_IDS  # NN_INPUT_* of the header
from xdpnn.trainer.model import Model


def words(n_bits: int) -> int:
    return (n_bits + 63) // 64


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """0/1 rows -> u64 words in the packet's byte order (docs/model-format.md).

    Bits are packed MSB first into bytes, padded with zeros to whole words,
    and each 8 bytes read as a little-endian u64: exactly what the XDP program
    gets when it loads 8 payload bytes, so inputs need no byte swapping.
    """
    rows, n = bits.shape
    padded = np.zeros((rows, words(n) * 64), np.uint8)
    padded[:, :n] = bits
    return np.packbits(padded, axis=1).view("<u8")


def offsets(sizes: list[int]) -> dict[str, int]:
    """Word offset of each array in the model value, in the order written."""
    off, at = {}, 0
    for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = l == len(sizes) - 2
        name = "OUT" if last else f"L{l}"
        off[f"{name}_W"] = at
        at += n_out * words(n_in)
        if last:
            off["OUT_SCALE"], off["OUT_BIAS"] = at, at + n_out
            at += 2 * n_out
        else:
            off[f"{name}_T"] = at
            at += n_out
    off["MODEL_WORDS"] = at
    return off


def model_words(model: Model) -> np.ndarray:
    """The flat u64 array: the value of the model's map."""
    parts = []
    for l, w in enumerate(model.weights):
        parts.append(pack_rows(w).ravel())
        if l < len(model.thresholds):
            parts.append(model.thresholds[l].astype("<i8").view("<u8"))
    parts += [model.out_scale.astype("<i8").view("<u8"), model.out_bias.astype("<i8").view("<u8")]
    flat = np.concatenate(parts)
    assert flat.size == offsets(model.sizes)["MODEL_WORDS"]
    return flat


def tail_mask(n_bits: int) -> int:
    """Mask of the real input bits in the last input word (as loaded)."""
    rem = n_bits % 64 or 64
    return int(pack_rows(np.ones((1, rem), np.uint8))[0, 0])


def cflags(model: Model, record_input: bool = False) -> list[str]:
    """The -D flags that give bpf/xdpnn.c the model's shape."""
    s = model.sizes
    n_in = s[0]
    defs = {
        "NN_INPUT_MODE": INPUT_MODE_IDS[model.mode],
        "NN_IN_BITS": n_in,
        "NN_IN_BYTES": (n_in + 7) // 8,
        "NN_IN_WORDS": words(n_in),
        "NN_IN_TAIL_MASK": f"{tail_mask(n_in):#x}ULL",
        "NN_HIDDEN": len(s) - 2,
        "NN_CLASSES": s[-1],
        "NN_MAX_WORDS": max(words(n) for n in s[:-1]),
        "NN_OUT_IN": s[-2],
        "NN_OUT_IN_WORDS": words(s[-2]),
    }
    for l in range(len(s) - 2):
        defs.update({f"NN_L{l}_IN": s[l], f"NN_L{l}_IN_WORDS": words(s[l]),
                     f"NN_L{l}_OUT": s[l + 1]})
    defs.update({f"NN_{k}": v for k, v in offsets(s).items()})
    flags = [f"-D{k}={v}" for k, v in defs.items()]
    if record_input:
        flags.append("-DNN_RECORD_INPUT")
    return flags
