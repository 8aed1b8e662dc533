"""From a Larq (Keras) binarized MLP to a model file.

The Keras file (.h5 or .keras) holds one chain of layers: an optional
Flatten at the input, then per layer a larq ``QuantDense`` whose kernel
quantizer makes its weights ±c per unit (``ste_sign``, ``approx_sign``,
``magnitude_aware_sign``, ...), optionally followed by
``BatchNormalization`` layers.  A hidden layer's activation is the next
QuantDense's ``input_quantizer``; the first QuantDense's input quantizer (or
none, for ±1 inputs) binarizes the input.  A packet's input bit b stands for
the value 2b - 1, as for ONNX graphs.

The folding is trainer/onnx_import.py's: the framework's own layers (the
batch norm in inference mode, then the quantizer) run on every value each
dot product can take, and the threshold or the output integers are read
off, ties included.  larq's signs map 0 to +1.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xdpnn.trainer.model import Model, ModelError, check_layout
from xdpnn.trainer.onnx_import import (GraphError, binary_rows, check_limits, dot_values,
                                       fold_scores, fold_steps, input_section)

SUFFIXES = (".h5", ".keras")


def _need_larq():
    # larq builds on Keras 2, which TensorFlow >= 2.16 ships as tf_keras
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import larq  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError(f"larq and TensorFlow are needed ({e.name} is missing): "
                                  "pip install larq tensorflow tf-keras") from None


def _keras():
    try:
        import tf_keras as keras
    except ImportError:
        from tensorflow import keras
    return keras


def load_keras(path: str | Path):
    _need_larq()
    import larq  # noqa: F401  (registers its layers with Keras)
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: no such file")
    try:
        return _keras().models.load_model(path, compile=False)
    except Exception as e:  # h5py, Keras and TensorFlow raise many kinds
        raise GraphError(f"{path}: not a Keras model ({type(e).__name__})") from None


def _label(layer) -> str:
    return f"layer '{layer.name}' ({type(layer).__name__})"


def keras_classes(km, bits: np.ndarray) -> np.ndarray:
    """The framework's class for each row of input bits (fed as 2b - 1): first maximum."""
    x = (np.asarray(bits, np.float32) * 2 - 1).reshape(len(bits), *km.input_shape[1:])
    return np.argmax(km.predict(x, batch_size=4096, verbose=0), axis=1)


def keras_inputs(km) -> int:
    return int(np.prod(km.input_shape[1:]))


def _framework_child(path: str, bits):
    km = load_keras(path)
    return keras_inputs(km), None if bits is None else keras_classes(km, bits)


def framework_in_child(path: str | Path, bits: np.ndarray | None = None):
    """(input count, classes of bits or None), computed by Keras in a child process.

    TensorFlow and BCC each bring their own LLVM: with TensorFlow loaded, a
    BCC compile in the same process crashes (SIGSEGV).  `verify --graph`
    compiles, so the framework runs apart.
    """
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_framework_child, (str(path), bits))


def import_keras(km, input_mode: str | None = None, port: int | None = None,
                 source: str = "") -> Model:
    """The model file of a Keras model; GraphError names the layer that does not fit."""
    import larq
    input_ = input_section({}, input_mode, port)
    layers = list(km.layers)
    while layers and type(layers[0]).__name__ in ("InputLayer", "Flatten", "Reshape"):
        layers.pop(0)
    n = keras_inputs(km)
    sizes, weights, thresholds = [n], [], []

    def quant_dense(i: int):
        if i >= len(layers) or not isinstance(layers[i], larq.layers.QuantDense):
            what = _label(layers[i]) if i < len(layers) else "the model's end"
            raise GraphError(f"{what}: expected a larq QuantDense (supported: QuantDense, "
                             "BatchNormalization, Flatten at the input)")
        layer = layers[i]
        if getattr(layer.activation, "__name__", "linear") != "linear":
            raise GraphError(f"{_label(layer)}: activation {layer.activation.__name__}; "
                             "binarize with the next layer's input_quantizer")
        return layer

    def quantize(q, x: np.ndarray) -> np.ndarray:
        return np.asarray(q(x) if q is not None else x, np.float64)

    layer = quant_dense(0)
    ends = quantize(layer.input_quantizer, np.stack([-np.ones(n), np.ones(n)]).astype(np.float32))
    lo, hi = ends[0], ends[1]
    if np.any(lo == hi):
        raise GraphError(f"{_label(layer)}: its input_quantizer maps -1 and +1 to one value")
    i = 0
    while True:
        w = np.asarray(quantize(layer.kernel_quantizer, np.asarray(layer.kernel)), np.float64)
        bits, c, d = binary_rows(w, lo, hi, _label(layer))
        if layer.use_bias:
            d = d + np.asarray(layer.bias, np.float64)
        units = w.shape[1]
        j = i + 1
        y = (c[None, :] * dot_values(sizes[-1])[:, None] + d[None, :]).astype(np.float32)
        while j < len(layers) and type(layers[j]).__name__ == "BatchNormalization":
            y = np.asarray(layers[j](y, training=False), np.float32)
            j += 1
        if j < len(layers):  # a hidden layer: the next QuantDense binarizes it
            nxt = quant_dense(j)
            check_limits(sizes + [units, 2], input_["mode"], _label(layer), len(weights))
            if nxt.input_quantizer is None:
                raise GraphError(f"{_label(nxt)}: no input_quantizer, so its inputs are not "
                                 "binary")
            act = quantize(nxt.input_quantizer, y)
            ends = quantize(nxt.input_quantizer,
                            np.stack([np.full(units, -3e38), np.full(units, 3e38)])
                            .astype(np.float32))
            lo, hi = ends.min(axis=0), ends.max(axis=0)
            bits, t = fold_steps(act, lo, hi, bits, sizes[-1], _label(nxt))
            weights.append(bits)
            thresholds.append(t)
            sizes.append(units)
            layer, i = nxt, j
            continue
        check_limits(sizes + [units], input_["mode"], _label(layer), len(weights))
        out_scale, out_bias, ints = fold_scores(y, sizes[-1], _label(layers[j - 1]))
        weights.append(bits)
        sizes.append(units)
        break
    try:
        check_layout(sizes, input_)
        return Model(sizes=sizes, weights=weights, thresholds=thresholds, out_scale=out_scale,
                     out_bias=out_bias, input=input_,
                     provenance={"source": "larq", "file": source,
                                 "output": "integers" if ints else "scaled and rounded"}
                     ).validate()
    except ModelError as e:
        raise GraphError(f"model: {e}") from None
