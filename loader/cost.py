"""What a model costs in the XDP program, predicted before it is compiled:
ns per inference and instructions the verifier walks, layer by layer.

A layer's cost is linear in its weight words: a fixed cost per layer plus
a cost per word, by method (loader/layout.py METHOD_IDS), where a word is

- horizontal hidden layer: one weight word (64 inputs of one neuron),
  n_out * in_words of them;
- vertical hidden layer: one transposed word (one input bit of 64 lanes),
  64 * groups * in_words (a group pays for its padding lanes), 32 fewer
  per group where the last input word's upper half is all padding
  (layout.half_tail: that half is skipped);
- vertical layer in 32-bit lanes ("w", at most 32 neurons): one
  transposed word (two input bits of 32 lanes), 32 * in_words;
- output layer ("out"): one weight word per class, classes * in_words,
  counted as horizontal words (the same popcount loop), plus a cost per
  class for the score and the argmax.

Parsing, the verdict and the test-run harness are one fixed cost (the
input's width shows in the first layer's words).  The
coefficients are fitted by scripts/fit_cost.py from BPF_PROG_TEST_RUN
timings and verified instruction counts of single builds, on the machine
named in cost_model.json; docs/benchmarks.md, "Cost model", has the table
and how well it predicts the default shapes.  ns figures are that machine's:
on another CPU, scale them (the ratios between methods hold better than
the absolute figures) or refit.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

from xdpnn.loader import layout

COEFFS_FILE = "cost_model.json"


@dataclass
class LayerCost:
    layer: int          # 0 .. hidden layers; the last is the output layer
    n_in: int
    n_out: int
    method: str         # "h", "v", "w" or "out"
    words: int          # units of work: weight words (see the module's doc)
    ns: float           # predicted ns per inference
    insns: float        # predicted instructions the verifier walks


@dataclass
class Prediction:
    sizes: list[int]
    methods: tuple[str, ...]
    fixed_ns: float          # parsing, the verdict, the test-run harness
    fixed_insns: float
    layers: list[LayerCost]

    @property
    def ns(self) -> float:
        return self.fixed_ns + sum(layer.ns for layer in self.layers)

    @property
    def insns(self) -> float:
        return self.fixed_insns + sum(layer.insns for layer in self.layers)

    def as_dict(self) -> dict:
        return {"ns": round(self.ns), "verified_insns": round(self.insns),
                "fixed_ns": round(self.fixed_ns), "methods": "".join(self.methods),
                "layers": [{"layer": c.layer, "shape": f"{c.n_in}-{c.n_out}", "method": c.method,
                            "words": c.words, "ns": round(c.ns), "verified_insns": round(c.insns)}
                           for c in self.layers]}


@functools.lru_cache(maxsize=None)
def _stored() -> str:
    return (resources.files("xdpnn.loader") / COEFFS_FILE).read_text()


def coefficients() -> dict:
    """The fitted coefficients and the machine they were measured on."""
    return json.loads(_stored())


def layer_words(n_in: int, n_out: int, method: str) -> int:
    """Units of work of one layer (see the module's doc)."""
    if method == "w":
        return 32 * layout.words(n_in)
    if method == "v":
        return layout.groups(n_out) * (64 * layout.words(n_in) - 32 * layout.half_tail(n_in))
    return n_out * layout.words(n_in)  # "h" and "out"


def features(sizes: list[int], methods: tuple[str, ...]) -> dict[str, float]:
    """The model's counts that the costs are linear in: what fit_cost.py
    regresses on, one name per coefficient."""
    f = {"fixed": 1.0,
         "h_layers": 0.0, "h_words": float(layer_words(sizes[-2], sizes[-1], "out")),
         "v_layers": 0.0, "v_words": 0.0, "w_layers": 0.0, "w_words": 0.0, "out_classes": float(sizes[-1])}
    for n_in, n_out, m in zip(sizes, sizes[1:], methods):
        f[f"{m}_layers"] += 1
        f[f"{m}_words"] += layer_words(n_in, n_out, m)
    return f


def predict(model_or_sizes, methods=None, coeffs: dict | None = None) -> Prediction:
    """Predicted cost of a model (a Model or its layer sizes) built with
    methods (None: the codegen's choice, layout.choose_methods)."""
    sizes = list(getattr(model_or_sizes, "sizes", model_or_sizes))
    # A multi-bit first layer (bpf/bnn_multibit.h) is horizontal over k
    # planes: counted as k times the words, an estimate the fit never saw.
    k = getattr(model_or_sizes, "input_bits", 1)
    methods = layout.check_methods(sizes, methods, k > 1)
    c = coeffs or coefficients()
    ns, insns = c["ns"], c["verified_insns"]

    layers = []
    for l, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = l == len(sizes) - 2
        m = "out" if last else methods[l]
        w = layer_words(n_in, n_out, m) * (k if l == 0 else 1)
        if last:
            layer_ns = ns["out_classes"] * n_out + ns["h_words"] * w
            layer_insns = insns["out_classes"] * n_out + insns["h_words"] * w
        else:
            layer_ns = ns[f"{m}_layers"] + ns[f"{m}_words"] * w
            layer_insns = insns[f"{m}_layers"] + insns[f"{m}_words"] * w
        layers.append(LayerCost(l, n_in, n_out, m, w, layer_ns, layer_insns))
    return Prediction(sizes, methods, ns["fixed"], insns["fixed"], layers)
