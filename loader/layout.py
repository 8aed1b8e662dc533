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


# How a hidden layer counts mismatches (bpf/bnn.h, NN_L<l>_METHOD):
# "h" horizontal, one neuron at a time, a SWAR popcount per weight word;
# "v" vertical, 64 neurons at a time in bit-sliced counters;
# "w" vertical in 32-bit lanes, two input bits per lane pair (at most
# W_MAX_OUT neurons).
METHOD_IDS = {"h": 0, "v": 1, "w": 2}
W_MAX_OUT = 32


def horizontal(sizes: list[int]) -> tuple[str, ...]:
    return ("h",) * (len(sizes) - 2)


def half_tail(n_in: int) -> bool:
    """Whether a vertical layer's last input word has its upper half
    (bits 32..63 as loaded) all padding: bpf/vertical.h adds only its lower
    half, so the layer reads 32 fewer transposed words per group."""
    return 0 < n_in % 64 <= 32


def choose_methods(sizes: list[int]) -> tuple[str, ...]:
    """The method of each hidden layer: vertical where its words cost less,
    by the cost model's per-word costs (loader/cost.py, docs/benchmarks.md,
    "Cost model").  A horizontal layer pays for n_out rows of input words,
    a vertical one for 64 lanes per group, padding lanes included (32
    neurons cost as much as 64), so the choice depends mostly on the neuron
    count.  The per-layer fixed costs are left out: the fit leaves them too
    uncertain to decide by (docs/benchmarks.md)."""
    from xdpnn.loader import cost  # it builds on this module's sizes
    ns = cost.coefficients()["ns"]

    def best(n_in, n_out):
        fits = [m for m in METHOD_IDS if m != "w" or n_out <= W_MAX_OUT]
        return min(fits, key=lambda m: ns[f"{m}_words"] * cost.layer_words(n_in, n_out, m))
    return tuple(best(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:-1]))


def check_methods(sizes: list[int], methods, multibit: bool = False) -> tuple[str, ...]:
    """multibit: the first layer takes k-bit values (bpf/bnn_multibit.h), whose
    words are laid out as a horizontal layer's."""
    methods = choose_methods(sizes) if methods is None else tuple(methods)
    if len(methods) != len(sizes) - 2 or not set(methods) <= set(METHOD_IDS):
        raise ValueError(f"methods {methods!r}: one of {sorted(METHOD_IDS)} per hidden layer "
                         f"of {len(sizes) - 2}")
    for l, m in enumerate(methods):
        if m == "w" and sizes[l + 1] > W_MAX_OUT:
            raise ValueError(f"methods {''.join(methods)!r}: layer {l} has {sizes[l + 1]} "
                             f"neurons, method w takes at most {W_MAX_OUT}")
    if multibit and methods[0] != "h":
        methods = ("h",) + methods[1:]
    return methods


def vbits(n_in: int) -> int:
    """Bit planes of a vertical layer's counts and limits: counts reach
    n_in and limits n_in + 1; at least 6: the adder tree's 5 and one that
    its carry ripples into (bpf/bnn.h bnn_hidden_v)."""
    return max(6, (n_in + 1).bit_length())


def groups(n_out: int) -> int:
    return (n_out + 63) // 64


def offsets(sizes: list[int], methods=None, multibit: bool = False) -> dict[str, int]:
    """Word offset of each array in the model value, in the order written;
    methods None is the codegen's choice."""
    methods = check_methods(sizes, methods, multibit)
    off, at = {}, 0
    for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = l == len(sizes) - 2
        name = "OUT" if last else f"L{l}"
        method = "out" if last else methods[l]
        vertical = method in ("v", "w")
        off[f"{name}_W"] = at
        at += {"v": groups(n_out) * words(n_in) * 64,
               "w": words(n_in) * 32}.get(method, n_out * words(n_in))
        if last:
            off["OUT_SCALE"], off["OUT_BIAS"] = at, at + n_out
            at += 2 * n_out
        else:
            off[f"{name}_T"] = at
            at += groups(n_out) * vbits(n_in) if vertical else n_out
    off["MODEL_WORDS"] = at
    return off


def lanes(planes: np.ndarray) -> np.ndarray:
    """(rows, n) 0/1 -> (rows, groups) u64: value j of a row goes to lane
    j % 64 of word j // 64, the activation word's layout (pack_rows)."""
    return pack_rows(planes)


def transposed(w: np.ndarray) -> np.ndarray:
    """A vertical layer's weights: per group of 64 neurons, one word per
    input bit position in its padded input words, in the order bpf/bnn.h
    reads them: word k * 64 + p is physical bit p of input word k, which is
    input bit 64k + (p & 0x38 | 7 - p & 7) (pack_rows's byte order)."""
    n_out, n_in = w.shape
    padded = np.zeros((n_out, words(n_in) * 64), np.uint8)
    padded[:, :n_in] = w
    by_input = lanes(padded.T)  # (inputs, groups): input i's weights of each group
    p = np.arange(64)
    order = (np.arange(words(n_in))[:, None] * 64 + ((p & 0x38) | (7 - (p & 7)))).ravel()
    return by_input[order].T.ravel()  # group by group


def transposed_w(w: np.ndarray) -> np.ndarray:
    """A "w" layer's weights (at most 32 neurons): per input word k, 32
    words; word k * 32 + q holds transposed()'s word for physical bit q in
    its lower 32 lanes and that of bit q + 32 in its upper 32 lanes
    (bpf/vertical.h bnn_hidden_w)."""
    assert w.shape[0] <= W_MAX_OUT
    t = transposed(w).reshape(-1, 2, 32)  # (input words, halves, q); lanes in bits 0..31
    return t[:, 0] | (t[:, 1] << np.uint64(32))


def limits(t: np.ndarray, n_in: int) -> np.ndarray:
    """A vertical layer's limit planes, group by group.  Neuron j fires iff
    n - 2d >= T_j, i.e. d <= (n - T_j) / 2, i.e. d < U_j = floor((n - T_j)/2)
    + 1; U is clipped to [0, n + 1], which keeps "never" (T > n) and
    "always" (T <= -n) as they are, as d is in [0, n]."""
    u = np.clip((n_in - np.clip(t.astype(np.int64), -n_in - 2, n_in + 2)) // 2 + 1,
                0, n_in + 1)
    bits = vbits(n_in)
    planes = (u[None, :] >> np.arange(bits)[:, None]) & 1  # (bits, n_out)
    return lanes(planes.astype(np.uint8)).T.ravel()


def model_words(model: Model, methods=None) -> np.ndarray:
    """The flat u64 array, the value of the model's map; methods None is the
    codegen's choice."""
    multibit = model.input_bits > 1
    methods = check_methods(model.sizes, methods, multibit)
    parts = []
    for l, w in enumerate(model.weights):
        if l == 0 and multibit:
            parts += [pack_rows(w).ravel(), multibit_limits(model).view("<u8")]
            continue
        if l < len(model.thresholds) and methods[l] in ("v", "w"):
            parts += [(transposed if methods[l] == "v" else transposed_w)(w).ravel(),
                      limits(model.thresholds[l], model.sizes[l])]
            continue
        parts.append(pack_rows(w).ravel())
        if l < len(model.thresholds):
            parts.append(model.thresholds[l].astype("<i8").view("<u8"))
    parts += [model.out_scale.astype("<i8").view("<u8"), model.out_bias.astype("<i8").view("<u8")]
    flat = np.concatenate(parts)
    assert flat.size == offsets(model.sizes, methods, multibit)["MODEL_WORDS"]
    return flat


def multibit_limits(model: Model) -> np.ndarray:
    """A multi-bit first layer's threshold words: U = C * P - T, with P the
    row's count of +1 weights and C the sum of the plane weights, so that
    a >= T iff the kernel's weighted mismatch count E <= U
    (bpf/bnn_multibit.h)."""
    from xdpnn.trainer.reference import plane_weights
    c = int(plane_weights(model.input_bits, model.input_signed).sum())
    p = model.weights[0].astype(np.int64).sum(1)
    return (c * p - model.thresholds[0].astype(np.int64)).astype("<i8")


def tail_mask(n_bits: int) -> int:
    """Mask of the real input bits in the last input word (as loaded)."""
    rem = n_bits % 64 or 64
    return int(pack_rows(np.ones((1, rem), np.uint8))[0, 0])


def cflags(model: Model, record_input: bool = False, methods=None) -> list[str]:
    """The -D flags that give bpf/xdpnn.c the model's shape and each hidden
    layer's method (methods None: the codegen's choice)."""
    s = model.sizes
    multibit = model.input_bits > 1
    methods = check_methods(s, methods, multibit)
    n_in = model.raw_bits  # a byte per input with multi-bit inputs
    defs = {
        "NN_INPUT_MODE": INPUT_MODE_IDS[model.mode],
        "NN_IN_BITS": n_in,
        "NN_IN_BYTES": (n_in + 7) // 8,
        "NN_IN_WORDS": words(n_in),
        "NN_IN_TAIL_MASK": f"{tail_mask(n_in):#x}ULL",
        "NN_HIDDEN": len(s) - 2,
        "NN_CLASSES": s[-1],
        # Multi-bit inputs: the first layer's k planes of input words too.
        "NN_MAX_WORDS": max([words(n) for n in [n_in] + s[1:-1]]
                            + [model.input_bits * words(s[0]) if multibit else 0]),
        "NN_OUT_IN": s[-2],
        "NN_OUT_IN_WORDS": words(s[-2]),
    }
    for l in range(len(s) - 2):
        defs.update({f"NN_L{l}_IN": s[l], f"NN_L{l}_IN_WORDS": words(s[l]),
                     f"NN_L{l}_OUT": s[l + 1], f"NN_L{l}_METHOD": METHOD_IDS[methods[l]],
                     f"NN_L{l}_BITS": vbits(s[l])})
    if multibit:  # bpf/bnn_multibit.h; binary models are built without these
        defs.update(NN_IN_VALUE_BITS=model.input_bits, NN_IN_SIGNED=int(model.input_signed))
    defs.update({f"NN_{k}": v for k, v in offsets(s, methods, multibit).items()})
    flags = [f"-D{k}={v}" for k, v in defs.items()]
    if record_input:
        flags.append("-DNN_RECORD_INPUT")
    return flags
