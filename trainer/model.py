"""The model file: the one contract between the trainer and the datapath.

A model file is a NumPy ``.npz`` archive.  It is read with bounds: the
file is read once, and every size, dtype and shape is checked against the
format's limits before the array behind it is read, so a hostile file costs
no more memory and time than the largest legal one; pickles are never read.
docs/model-format.md documents every field; this module reads, validates and
writes it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

FORMAT = "xdpnn-bnn"
VERSION = 1  # binary inputs: what every reader of version 1 takes
MULTIBIT_VERSION = 2  # multi-bit inputs (input.bits, input.signed)
VERSIONS = (VERSION, MULTIBIT_VERSION)

# What the XDP program supports (docs/model-format.md, "Limits").  Sizes past
# these would overflow the 512-byte BPF stack or the verifier's budget of a
# layer (a model over one program's budget runs as stages, docs/partitioning.md).
MAX_INPUT_BITS = 1024
MAX_HEADER_BITS = 256  # the headers-mode feature record is 32 bytes
MAX_HIDDEN_LAYERS = 4
MAX_HIDDEN_UNITS = 2048  # a 2048x2048 layer is over one program's budget: stages split it
MAX_CLASSES = 64
THRESHOLD_RANGE = (-(2**31), 2**31 - 1)
SCALE_RANGE = (-(2**16), 2**16)
BIAS_RANGE = (-(2**40), 2**40)
INPUT_MODES = ("payload", "headers", "flow")
# Multi-bit inputs (version 2): one k-bit value per byte, so the input count is
# bounded by bytes: 128 payload bytes, the 32-byte feature record.
MAX_INPUT_VALUE_BITS = 8
MAX_MULTIBIT_INPUTS = {"payload": 128, "headers": 32}
DEFAULT_PORT = 9595

# Limits of the file itself, all derived from the limits above: the loader
# refuses anything larger before reading it.
LARGEST_MODEL = [MAX_INPUT_BITS] + [MAX_HIDDEN_UNITS] * MAX_HIDDEN_LAYERS + [MAX_CLASSES]
MAX_ARRAY_BYTES = (sum(o * -(-i // 8) for i, o in zip(LARGEST_MODEL, LARGEST_MODEL[1:]))
                   + 8 * sum(LARGEST_MODEL[1:-1]) + 2 * 8 * MAX_CLASSES)  # 566,272
MAX_HEADER_BYTES = 256 * 1024  # the JSON header; a 64-class training report is ~60 KB
NPY_HEADER_BYTES = 4096  # one .npy member's own header (NumPy writes 128 bytes)
MAX_FILE_BYTES = 4 * (MAX_ARRAY_BYTES + MAX_HEADER_BYTES)  # 3,313,664
# Members are read (their .npy headers) before the header says which names to
# expect, at most 12: a bound on that work, loose enough for a wrong layer count
# to be reported as such.
MAX_MEMBERS = 64
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this
INT_DTYPES = ("|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8")  # t, out_scale, out_bias


class ModelError(ValueError):
    """A model file or model that does not follow the format."""


def check_layout(sizes: list[int], input_: dict) -> None:
    """The layer sizes and the input section, before any array is made."""
    _check(isinstance(sizes, list) and all(_is_int(s) for s in sizes),
           "layers", "a list of integers", sizes)
    _check(3 <= len(sizes) <= MAX_HIDDEN_LAYERS + 2, "layers",
           f"inputs, 1 to {MAX_HIDDEN_LAYERS} hidden layers, classes", sizes)
    _check(isinstance(input_, dict) and input_.get("mode") in INPUT_MODES,
           "input.mode", " or ".join(INPUT_MODES), input_)
    mode = input_["mode"]
    bits, signed = input_value_bits(input_)
    max_in = MAX_HEADER_BITS if mode in ("headers", "flow") else MAX_INPUT_BITS
    if bits > 1:
        _check(mode in MAX_MULTIBIT_INPUTS, "input.mode",
               f"{' or '.join(MAX_MULTIBIT_INPUTS)} with input.bits > 1", mode)
        max_in = MAX_MULTIBIT_INPUTS[mode]
    _check(1 <= sizes[0] <= max_in, "layers[0] (inputs)",
           f"1..{max_in} in {mode} mode" + (f" with {bits}-bit inputs" if bits > 1 else ""),
           sizes[0])
    for l, s in enumerate(sizes[1:-1], 1):
        _check(1 <= s <= MAX_HIDDEN_UNITS, f"layers[{l}] (hidden)",
               f"1..{MAX_HIDDEN_UNITS}", s)
    _check(2 <= sizes[-1] <= MAX_CLASSES, f"layers[{len(sizes) - 1}] (classes)",
           f"2..{MAX_CLASSES}", sizes[-1])
    if "port" in input_:  # headers mode ignores it, but a port that is there is a port
        port = input_["port"]
        _check(_is_int(port) and 1 <= port <= 65535, "input.port", "1..65535", port)


def input_value_bits(input_: dict) -> tuple[int, bool]:
    """(k, signed) of the input section: k = 1 (absent) is a binary input."""
    bits, signed = input_.get("bits", 1), input_.get("signed", False)
    _check(_is_int(bits) and 1 <= bits <= MAX_INPUT_VALUE_BITS, "input.bits",
           f"an integer 1..{MAX_INPUT_VALUE_BITS}", bits)
    _check(isinstance(signed, bool), "input.signed", "true or false", signed)
    _check(bits > 1 or not signed, "input.signed", "false with 1-bit (binary) inputs", signed)
    return bits, signed


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    # sha256 of the file bytes this model was parsed from ("" if made in memory)
    sha256: str = field(default="", repr=False, compare=False)

    def __post_init__(self):
        if not self.classes:
            self.classes = [f"class{k}" for k in range(self.sizes[-1])]

    @property
    def shape(self) -> str:
        return "-".join(str(s) for s in self.sizes)

    @property
    def mode(self) -> str:
        return self.input["mode"]

    @property
    def input_bits(self) -> int:
        """k: 1 for binary inputs, 2..8 for one k-bit value per input byte."""
        return self.input.get("bits", 1)

    @property
    def input_signed(self) -> bool:
        return self.input.get("signed", False)

    @property
    def raw_bits(self) -> int:
        """Bits the datapath reads from a packet or record for one input:
        one per input, or a whole byte per multi-bit input."""
        return self.sizes[0] * (8 if self.input_bits > 1 else 1)

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
        # `status -j` and the attach record print it: it must stay valid JSON.
        _check(_strict_json(self.provenance), "provenance", "JSON without NaN or Infinity",
               self.provenance)
        return self

    def save(self, path: str | Path) -> None:
        self.validate()
        # Binary models keep version 1, byte for byte what older readers take.
        version = MULTIBIT_VERSION if self.input_bits > 1 else VERSION
        header = {"format": FORMAT, "version": version, "layers": self.sizes,
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


def _strict_json(v) -> bool:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _check_ints(a, name, shape, bounds):
    _check(isinstance(a, np.ndarray) and a.shape == shape, name, f"shape {shape}",
           getattr(a, "shape", type(a).__name__))
    _check(np.issubdtype(a.dtype, np.integer), name, "integers", a.dtype)
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        _check(bounds[0] <= lo and hi <= bounds[1], name, f"values in [{bounds[0]}, {bounds[1]}]",
               f"[{lo}, {hi}]")


def load(path: str | Path) -> Model:
    """Reads and validates a model file; ModelError names the file and field.

    The file is read once, and those bytes are both parsed and hashed:
    ``Model.sha256`` names exactly the bytes the model came from.
    """
    path = Path(path)
    try:
        return loads(read_file(path))
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, zlib.error, RuntimeError,
            NotImplementedError) as e:  # zipfile: unsupported or "encrypted" entries
        raise ModelError(f"{path}: not an xdpnn model file ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    lines = str(e).splitlines()  # the CLI reports errors as one line
    return lines[0] if lines else type(e).__name__


def _refuse(why: str):
    raise ModelError(f"not an xdpnn model file ({why})")


FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device",
              stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def read_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES.

    The kind is checked before the open (opening a FIFO waits for a writer,
    opening a device may act on it) and again on the opened descriptor, in
    case the path was replaced in between; O_NONBLOCK keeps that open from
    waiting.
    """
    before = os.stat(path)
    _check_regular(before)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            _refuse("the file was replaced while being opened")
        _check_regular(st)
        data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since the fstat
    _check_size(len(data))
    return data


def _check_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        _refuse(f"{FILE_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}, "
                "not a regular file")
    _check_size(st.st_size)


def _check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        _refuse(f"more than {MAX_FILE_BYTES:,} bytes, the limit for the largest legal model")


def loads(data: bytes) -> Model:
    """Parses and validates a model file's bytes."""
    if data.startswith(npy.MAGIC_PREFIX):
        _refuse("a single .npy array, not an .npz archive")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = _members(z)
        _check("header" in members, "header", "a JSON header array", sorted(members))
        header = _header(z, members.pop("header"))
        sizes = header["layers"]
        n_layers = len(sizes) - 1
        ints = {f"t{l}": sizes[l + 1] for l in range(n_layers - 1)}
        ints.update(out_scale=sizes[-1], out_bias=sizes[-1])
        expected = {f"w{l}" for l in range(n_layers)} | set(ints)
        _check(set(members) == expected, "arrays", sorted(expected), sorted(members))
        weights = [_weights(z, members[f"w{l}"], f"w{l}", sizes[l], sizes[l + 1])
                   for l in range(n_layers)]
        arrays = {name: _ints(z, members[name], name, n) for name, n in ints.items()}
    model = Model(sizes=sizes, weights=weights,
                  thresholds=[arrays[f"t{l}"] for l in range(n_layers - 1)],
                  out_scale=arrays["out_scale"], out_bias=arrays["out_bias"],
                  input=header["input"], classes=header.get("classes"),
                  provenance=header.get("provenance", {}),
                  sha256=hashlib.sha256(data).hexdigest())
    return model.validate()


# --- the archive: every size, dtype and shape is checked before data is read --

@dataclass
class _Member:
    """A .npy member of the archive, as its zip entry and .npy header say."""
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple
    fortran_order: bool
    offset: int  # where the array's bytes start


def _members(z: zipfile.ZipFile) -> dict[str, _Member]:
    """Array name -> member, from the zip directory and each member's .npy header."""
    infos = z.infolist()
    _check(len(infos) <= MAX_MEMBERS, "arrays", f"at most {MAX_MEMBERS} arrays",
           f"{len(infos)} members")
    names = [i.filename.removesuffix(".npy") for i in infos]
    twice = sorted({n for n in names if names.count(n) > 1})
    # zipfile and np.load would silently use the last of two same-named members.
    _check(not twice, "arrays", "each array once", f"{twice} more than once")
    return {name: _member(z, info, name) for name, info in zip(names, infos)}


def _largest(name: str) -> int:
    """Data bytes of the largest legal array of that name."""
    if name[:1] == "w":  # the widest rows are a hidden layer's
        return MAX_HIDDEN_UNITS * max(MAX_HIDDEN_UNITS, MAX_INPUT_BITS) // 8
    if name[:1] == "t":
        return 8 * MAX_HIDDEN_UNITS
    if name in ("out_scale", "out_bias"):
        return 8 * MAX_CLASSES
    return MAX_HEADER_BYTES  # the header, and names refused once the header is read


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _Member:
    member = repr(info.filename)
    _check(info.filename.endswith(".npy"), "arrays", ".npy members", info.filename)
    if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        _refuse(f"member {member}: encrypted, or compressed with method {info.compress_type}; "
                "expected stored or deflate")
    limit = NPY_HEADER_BYTES + _largest(name)
    _check(info.file_size <= limit, name, f"at most {limit:,} bytes",
           f"{info.file_size:,} bytes uncompressed")
    if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        _refuse(f"member {member}: {info.compress_size:,} bytes claim to hold "
                f"{info.file_size:,}, more than deflate can compress")
    with z.open(info) as f:
        try:
            version = npy.read_magic(f)
        except ValueError:
            _refuse(f"member {member} is not a .npy array")
        if version not in ((1, 0), (2, 0)):
            _refuse(f"member {member}: .npy version {version}, expected 1.0 or 2.0")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        try:
            shape, fortran_order, dtype = read_header(f, max_header_size=NPY_HEADER_BYTES)
        except ValueError as e:
            _refuse(f"member {member}: bad .npy header: {_first_line(e)}")
        offset = f.tell()
    if dtype.hasobject:  # such an array is a pickle: refused here, never read
        _refuse(f"member {member} holds Python objects, which model files never do")
    return _Member(info, dtype, shape, fortran_order, offset)


def _data(z: zipfile.ZipFile, m: _Member, name: str) -> np.ndarray:
    """The array, once its dtype and shape are checked: the member holds
    exactly the bytes the shape needs, and no more are read."""
    nbytes = m.dtype.itemsize * int(np.prod(m.shape))
    _check(m.info.file_size == m.offset + nbytes, name,
           f"{m.offset + nbytes:,} bytes (.npy header and data)", f"{m.info.file_size:,}")
    with z.open(m.info) as f:
        f.seek(m.offset)
        raw = f.read(nbytes)  # reading to the member's end also checks its CRC
    _check(len(raw) == nbytes, name, f"{nbytes:,} data bytes", f"{len(raw):,}")
    order = "F" if m.fortran_order else "C"
    return np.frombuffer(raw, m.dtype).reshape(m.shape, order=order).copy()


def _weights(z: zipfile.ZipFile, m: _Member, name: str, n_in: int, n_out: int) -> np.ndarray:
    want = (n_out, (n_in + 7) // 8)
    _check(m.dtype.str == "|u1" and m.shape == want, name, f"packed uint8 of shape {want}",
           f"{m.dtype} {m.shape}")
    bits = np.unpackbits(_data(z, m, name), axis=1)
    _check(not bits[:, n_in:].any(), name, "zero padding bits past the inputs", "ones")
    return np.ascontiguousarray(bits[:, :n_in])


def _ints(z: zipfile.ZipFile, m: _Member, name: str, n: int) -> np.ndarray:
    _check(m.dtype.str in INT_DTYPES and m.shape == (n,), name,
           f"little-endian integers of shape {(n,)}", f"{m.dtype} {m.shape}")
    return _data(z, m, name)


# --- the JSON header ----------------------------------------------------------

def _header(z: zipfile.ZipFile, m: _Member) -> dict:
    """The header object, with the type of every field it holds checked."""
    _check(m.dtype.str == "|u1" and len(m.shape) == 1 and 0 <= m.shape[0] <= MAX_HEADER_BYTES,
           "header", f"a JSON header array (at most {MAX_HEADER_BYTES:,} uint8 bytes)",
           f"{m.dtype} {m.shape}")
    raw = _data(z, m, "header").tobytes()
    try:
        header = json.loads(raw.decode(), parse_constant=_no_constant, parse_float=_finite,
                            object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting too deep
        raise ModelError(f"field 'header': expected JSON, got an error: {_first_line(e)}"
                         ) from None
    _check(isinstance(header, dict), "header", "a JSON object", type(header).__name__)
    _check(header.get("format") == FORMAT, "format", repr(FORMAT), header.get("format"))
    version = header.get("version")
    _check(_is_int(version) and version in VERSIONS, "version",
           " or ".join(map(str, VERSIONS)), version)
    input_ = header.get("input")
    if version == VERSION and isinstance(input_, dict):  # else check_layout names the problem
        _check("bits" not in input_ and "signed" not in input_, "input.bits",
               "no input.bits or input.signed in a version 1 file (they need version 2)",
               input_)
    elif isinstance(input_, dict):
        _check("bits" in input_ and "signed" in input_, "input.bits",
               "input.bits and input.signed in a version 2 file", input_)
    sizes = header.get("layers")
    _check(isinstance(sizes, list) and len(sizes) >= 3
           and all(_is_int(s) and s > 0 for s in sizes),
           "layers", "a list of at least 3 positive integers", sizes)
    check_layout(sizes, header.get("input"))
    if "classes" in header:  # absent means default names; anything else is checked
        classes = header["classes"]
        _check(isinstance(classes, list) and len(classes) == sizes[-1], "classes",
               f"{sizes[-1]} distinct non-empty names", classes)
    return header


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):  # 1e999 parses as inf
        raise ValueError(f"number {text} is out of range")
    return v


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last one
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return obj


def random_model(sizes: list[int], seed: int = 0, mode: str = "payload",
                 port: int = DEFAULT_PORT, input_bits: int = 1, signed: bool = False) -> Model:
    """A valid model with random weights, for tests and benchmarks.

    Thresholds are drawn near 0 so that hidden units fire about half the time
    (the ±1 dot product of n random bits has spread sqrt(n)); the output
    layer mixes plain scores with scaled and biased ones so ties happen too.
    """
    input_ = {"mode": mode, "port": port} if mode == "payload" else {"mode": mode}
    if input_bits > 1 or signed:
        input_.update(bits=input_bits, signed=signed)
    check_layout(sizes, input_)
    rng = np.random.default_rng(seed)
    weights = [rng.integers(0, 2, (o, i), dtype=np.uint8) for i, o in zip(sizes, sizes[1:])]
    thresholds = [rng.integers(-int(np.sqrt(n)) - 1, int(np.sqrt(n)) + 2, o).astype(np.int64)
                  for n, o in zip(sizes[:-2], sizes[1:-1])]
    if input_bits > 1:
        # Near the middle of the first layer's range: a random k-bit dot
        # product spreads by about the values' spread times sqrt(n).
        spread = int(np.sqrt(sizes[0])) * 2 ** (input_bits - 1)
        centre = 0 if signed else (2 ** input_bits - 1) * (2 * weights[0].astype(np.int64).sum(1)
                                                           - sizes[0]) // 2
        thresholds[0] = centre + rng.integers(-spread, spread + 1, sizes[1])
    n_classes = sizes[-1]
    out_scale = rng.choice([1, 1, 2, 3, -1], n_classes).astype(np.int64)
    out_bias = rng.integers(-4, 5, n_classes).astype(np.int64) * rng.integers(0, 2, n_classes)
    return Model(sizes=list(sizes), weights=weights, thresholds=thresholds,
                 out_scale=out_scale, out_bias=out_bias, input=input_,
                 provenance={"source": "random", "seed": seed}).validate()
