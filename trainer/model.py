"""The model file: the one contract between the trainer and the datapath.

A model file is a NumPy ``.npz`` archive (loaded with ``allow_pickle=False``:
reading a model never runs code from it).  docs/model-format.md documents
every field; this module reads, validates and writes it.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "xdpnn-bnn"
VERSION = 1

# What the XDP program supports (docs/model-format.md, "Limits").  Sizes past
# these would overflow the 512-byte BPF stack or the verifier's budget.
MAX_INPUT_BITS = 1024
MAX_HEADER_BITS = 256  # the headers-mode feature record is 32 bytes
MAX_HIDDEN_LAYERS = 4
MAX_HIDDEN_UNITS = 512
MAX_CLASSES = 64
THRESHOLD_RANGE = (-(2**31), 2**31 - 1)
SCALE_RANGE = (-(2**16), 2**16)
BIAS_RANGE = (-(2**40), 2**40)
INPUT_MODES = ("payload", "headers")
DEFAULT_PORT = 9595


class ModelError(ValueError):
    """A model file or model that does not follow the format."""


def check_layout(sizes: list[int], input_: dict) -> None:
    """The layer sizes and the input section, before any array is made."""
    _check(isinstance(sizes, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                           for s in sizes),
           "layers", "a list of integers", sizes)
    _check(3 <= len(sizes) <= MAX_HIDDEN_LAYERS + 2, "layers",
           f"inputs, 1 to {MAX_HIDDEN_LAYERS} hidden layers, classes", sizes)
    _check(isinstance(input_, dict) and input_.get("mode") in INPUT_MODES,
           "input.mode", " or ".join(INPUT_MODES), input_)
    mode = input_["mode"]
    max_in = MAX_HEADER_BITS if mode == "headers" else MAX_INPUT_BITS
    _check(1 <= sizes[0] <= max_in, "layers[0] (inputs)",
           f"1..{max_in} in {mode} mode", sizes[0])
    for l, s in enumerate(sizes[1:-1], 1):
        _check(1 <= s <= MAX_HIDDEN_UNITS, f"layers[{l}] (hidden)",
               f"1..{MAX_HIDDEN_UNITS}", s)
    _check(2 <= sizes[-1] <= MAX_CLASSES, f"layers[{len(sizes) - 1}] (classes)",
           f"2..{MAX_CLASSES}", sizes[-1])
    if mode == "payload":
        port = input_.get("port", DEFAULT_PORT)
        _check(isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535,
               "input.port", "1..65535", port)


@dataclass
class Model:
    """A binarized MLP: ``sizes`` = [inputs, hidden..., classes].

    ``weights[l]`` is a 0/1 uint8 array of shape (sizes[l+1], sizes[l]): bit 1
    stands for +1 and 0 for -1.  Hidden layer l fires neuron j iff its dot
    product is >= ``thresholds[l][j]``; the output layer scores class k as
    ``out_scale[k] * a_k + out_bias[k]``.
    """

    sizes: list[int]
    weights: list[np.ndarray]
    thresholds: list[np.ndarray]
    out_scale: np.ndarray
    out_bias: np.ndarray
    input: dict = field(default_factory=lambda: {"mode": "payload", "port": DEFAULT_PORT})
    classes: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.classes:
            self.classes = [f"class{k}" for k in range(self.sizes[-1])]

    @property
    def shape(self) -> str:
        return "-".join(str(s) for s in self.sizes)

    @property
    def mode(self) -> str:
        return self.input["mode"]

    def validate(self) -> "Model":
        """Checks every field; raises ModelError naming the field."""
        sizes = self.sizes
        check_layout(sizes, self.input)

        _check(len(self.weights) == len(sizes) - 1, "weights", f"{len(sizes) - 1} layers",
               len(self.weights))
        for l, w in enumerate(self.weights):
            want = (sizes[l + 1], sizes[l])
            _check(isinstance(w, np.ndarray) and w.shape == want, f"w{l}", f"shape {want}",
                   getattr(w, "shape", type(w).__name__))
            _check(w.dtype == np.uint8 and not (w > 1).any(), f"w{l}", "0/1 uint8 bits",
                   f"dtype {w.dtype}, max {w.max() if w.size else 0}")
        _check(len(self.thresholds) == len(sizes) - 2, "thresholds",
               f"{len(sizes) - 2} hidden layers", len(self.thresholds))
        for l, t in enumerate(self.thresholds):
            _check_ints(t, f"t{l}", (sizes[l + 1],), THRESHOLD_RANGE)
        _check_ints(self.out_scale, "out_scale", (sizes[-1],), SCALE_RANGE)
        _check_ints(self.out_bias, "out_bias", (sizes[-1],), BIAS_RANGE)
        _check(isinstance(self.classes, list) and len(self.classes) == sizes[-1]
               and all(isinstance(c, str) and c and c.isprintable() for c in self.classes)
               and len(set(self.classes)) == len(self.classes),
               "classes", f"{sizes[-1]} distinct non-empty names", self.classes)
        _check(isinstance(self.provenance, dict), "provenance", "an object", self.provenance)
        return self

    def save(self, path: str | Path) -> None:
        self.validate()
        header = {"format": FORMAT, "version": VERSION, "layers": self.sizes,
                  "input": self.input, "classes": self.classes, "provenance": self.provenance}
        arrays = {"header": np.frombuffer(json.dumps(header, indent=1).encode(), np.uint8)}
        for l, w in enumerate(self.weights):
            arrays[f"w{l}"] = np.packbits(w, axis=1)
        for l, t in enumerate(self.thresholds):
            arrays[f"t{l}"] = t.astype("<i8")
        arrays["out_scale"] = self.out_scale.astype("<i8")
        arrays["out_bias"] = self.out_bias.astype("<i8")
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        Path(path).write_bytes(buf.getvalue())


def _check(ok, name, expected, actual):
    if not ok:
        raise ModelError(f"field '{name}': expected {expected}, got {_short(actual)}")


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _check_ints(a, name, shape, bounds):
    _check(isinstance(a, np.ndarray) and a.shape == shape, name, f"shape {shape}",
           getattr(a, "shape", type(a).__name__))
    _check(np.issubdtype(a.dtype, np.integer), name, "integers", a.dtype)
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        _check(bounds[0] <= lo and hi <= bounds[1], name, f"values in [{bounds[0]}, {bounds[1]}]",
               f"[{lo}, {hi}]")


def load(path: str | Path) -> Model:
    """Reads and validates a model file; ModelError names the file and field."""
    path = Path(path)
    try:
        return _load(path)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, zlib.error,
            RuntimeError) as e:  # zipfile: unsupported or "encrypted" entries
        raise ModelError(f"{path}: not an xdpnn model file ({e})") from None


def _load(path: Path) -> Model:
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelError("not an xdpnn model file (a single .npy array, not an .npz archive)")
    with z:
        arrays = {k: z[k] for k in z.files}
    _check("header" in arrays, "header", "a JSON header array", sorted(arrays))
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"field 'header': expected JSON, got an error: {e}") from None
    _check(isinstance(header, dict), "header", "a JSON object", type(header).__name__)
    _check(header.get("format") == FORMAT, "format", repr(FORMAT), header.get("format"))
    _check(header.get("version") == VERSION, "version", VERSION, header.get("version"))
    sizes = header.get("layers")
    _check(isinstance(sizes, list) and len(sizes) >= 3 and all(isinstance(s, int) and s > 0
                                                               for s in sizes),
           "layers", "a list of at least 3 positive integers", sizes)
    n_layers = len(sizes) - 1
    expected = {f"w{l}" for l in range(n_layers)} | {f"t{l}" for l in range(n_layers - 1)} \
        | {"out_scale", "out_bias"}
    _check(set(arrays) == expected, "arrays", sorted(expected), sorted(arrays))

    weights = []
    for l in range(n_layers):
        packed = arrays[f"w{l}"]
        want = (sizes[l + 1], (sizes[l] + 7) // 8)
        _check(packed.dtype == np.uint8 and packed.shape == want, f"w{l}",
               f"packed uint8 of shape {want}", f"{packed.dtype} {packed.shape}")
        bits = np.unpackbits(packed, axis=1)
        _check(not bits[:, sizes[l]:].any(), f"w{l}", "zero padding bits past the inputs",
               "ones")
        weights.append(np.ascontiguousarray(bits[:, :sizes[l]]))
    model = Model(sizes=sizes, weights=weights,
                  thresholds=[arrays[f"t{l}"] for l in range(n_layers - 1)],
                  out_scale=arrays["out_scale"], out_bias=arrays["out_bias"],
                  input=header.get("input"), classes=header.get("classes"),
                  provenance=header.get("provenance", {}))
    return model.validate()


def random_model(sizes: list[int], seed: int = 0, mode: str = "payload",
                 port: int = DEFAULT_PORT) -> Model:
    """A valid model with random weights, for tests and benchmarks.

    Thresholds are drawn near 0 so that hidden units fire about half the time
    (the ±1 dot product of n random bits has spread sqrt(n)); the output
    layer mixes plain scores with scaled and biased ones so ties happen too.
    """
    input_ = {"mode": mode, "port": port} if mode == "payload" else {"mode": mode}
    check_layout(sizes, input_)
    rng = np.random.default_rng(seed)
    weights = [rng.integers(0, 2, (o, i), dtype=np.uint8) for i, o in zip(sizes, sizes[1:])]
    thresholds = [rng.integers(-int(np.sqrt(n)) - 1, int(np.sqrt(n)) + 2, o).astype(np.int64)
                  for n, o in zip(sizes[:-2], sizes[1:-1])]
    n_classes = sizes[-1]
    out_scale = rng.choice([1, 1, 2, 3, -1], n_classes).astype(np.int64)
    out_bias = rng.integers(-4, 5, n_classes).astype(np.int64) * rng.integers(0, 2, n_classes)
    return Model(sizes=list(sizes), weights=weights, thresholds=thresholds,
                 out_scale=out_scale, out_bias=out_bias, input=input_,
                 provenance={"source": "random", "seed": seed}).validate()
