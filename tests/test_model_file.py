"""Tier 1: the model file (trainer/model.py) and its map layout (loader/layout.py)."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from xdpnn.loader import layout
from xdpnn.trainer import reference
from xdpnn.trainer.model import FORMAT, VERSION, Model, ModelError, load, random_model

SHAPE = [20, 6, 5, 3]  # 20 inputs: the packed rows carry 4 padding bits


def unchecked(sizes, mode="payload", **fields) -> Model:
    """A model of any shape, valid or not: the constructor does not validate."""
    rng = np.random.default_rng(1)
    m = Model(sizes=list(sizes),
              weights=[rng.integers(0, 2, (o, i), dtype=np.uint8)
                       for i, o in zip(sizes, sizes[1:])],
              thresholds=[np.zeros(o, np.int64) for o in sizes[1:-1]],
              out_scale=np.ones(sizes[-1], np.int64), out_bias=np.zeros(sizes[-1], np.int64),
              input={"mode": mode, "port": 9595} if mode == "payload" else {"mode": mode})
    for k, v in fields.items():
        setattr(m, k, v)
    return m


def parts(m: Model) -> tuple[dict, dict]:
    """The header and arrays Model.save writes, without validating first."""
    header = {"format": FORMAT, "version": VERSION, "layers": m.sizes, "input": m.input,
              "classes": m.classes, "provenance": m.provenance}
    arrays = {f"w{l}": np.packbits(w, axis=1) for l, w in enumerate(m.weights)}
    arrays.update({f"t{l}": t for l, t in enumerate(m.thresholds)})
    arrays.update(out_scale=m.out_scale, out_bias=m.out_bias)
    return header, arrays


def write(path, header, arrays) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        np.savez(f, header=np.frombuffer(raw, np.uint8), **arrays)


def assert_field_error(exc, field, expected, actual):
    msg = str(exc.value)
    assert f"field '{field}'" in msg, msg
    assert re.search(r"expected .*" + re.escape(expected), msg), msg
    assert re.search(r"got .*" + re.escape(actual), msg), msg


# --- round trip -------------------------------------------------------------

@pytest.mark.parametrize("sizes,mode", [
    ([20, 6, 5, 3], "payload"),
    ([100, 7, 3], "payload"),
    ([64, 1, 2], "payload"),
    ([256, 32, 16, 8, 4, 64], "headers"),
    ([1024, 512, 2], "payload"),
])
def test_save_load_round_trip_keeps_every_field(tmp_path, sizes, mode):
    m = random_model(sizes, seed=3, mode=mode)
    m.classes = [f"k{k}-ünï" for k in range(sizes[-1])]
    m.provenance = {"source": "test", "nested": {"a": [1, 2.5, None]}, "seed": 3}
    m.save(tmp_path / "m.npz")
    got = load(tmp_path / "m.npz")
    assert got.sizes == m.sizes
    assert got.input == m.input
    assert got.classes == m.classes
    assert got.provenance == m.provenance
    assert len(got.weights) == len(m.weights)
    for a, b in zip(got.weights, m.weights):
        assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert len(got.thresholds) == len(m.thresholds)
    for a, b in zip(got.thresholds, m.thresholds):
        assert np.issubdtype(a.dtype, np.integer) and np.array_equal(a, b)
    assert np.array_equal(got.out_scale, m.out_scale)
    assert np.array_equal(got.out_bias, m.out_bias)


def test_extreme_values_round_trip(tmp_path):
    m = unchecked([9, 2, 2], thresholds=[np.array([-(2**31), 2**31 - 1])],
                  out_scale=np.array([-(2**16), 2**16]), out_bias=np.array([-(2**40), 2**40]))
    m.save(tmp_path / "m.npz")
    got = load(tmp_path / "m.npz")
    assert got.thresholds[0].tolist() == [-(2**31), 2**31 - 1]
    assert got.out_scale.tolist() == [-(2**16), 2**16]
    assert got.out_bias.tolist() == [-(2**40), 2**40]


def test_handwritten_file_loads(tmp_path):
    """The helpers below write valid files; each error case changes one thing."""
    m = unchecked(SHAPE)
    write(tmp_path / "m.npz", *parts(m))
    assert load(tmp_path / "m.npz").sizes == SHAPE


def test_save_validates_first(tmp_path):
    with pytest.raises(ModelError, match="field 'layers\\[2\\] \\(hidden\\)'"):
        unchecked([8, 4, 0, 2]).save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# --- validation: each invalid model, written to a file, then loaded ---------

MODEL_ERRORS = [
    # id, model, field, expected, actual
    ("5 hidden layers", unchecked([8, 4, 4, 4, 4, 4, 2]), "layers",
     "1 to 4 hidden layers", "[8, 4, 4, 4, 4, 4, 2]"),
    ("1025 inputs", unchecked([1025, 4, 2]), "layers[0] (inputs)", "1..1024 in payload mode",
     "1025"),
    ("257 header inputs", unchecked([257, 4, 2], mode="headers"), "layers[0] (inputs)",
     "1..256 in headers mode", "257"),
    ("2049 hidden units", unchecked([8, 4, 2049, 2]), "layers[2] (hidden)", "1..2048", "2049"),
    ("65 classes", unchecked([8, 4, 65]), "layers[2] (classes)", "2..64", "65"),
    ("1 class", unchecked([8, 4, 1]), "layers[2] (classes)", "2..64", "1"),
    ("input mode unknown", unchecked(SHAPE, input={"mode": "flows"}), "input.mode",
     "payload or headers", "'flows'"),
    ("input not an object", unchecked(SHAPE, input="payload"), "input.mode",
     "payload or headers", "'payload'"),
    ("port 0", unchecked(SHAPE, input={"mode": "payload", "port": 0}), "input.port",
     "1..65535", "0"),
    ("port 65536", unchecked(SHAPE, input={"mode": "payload", "port": 65536}), "input.port",
     "1..65535", "65536"),
    ("port a string", unchecked(SHAPE, input={"mode": "payload", "port": "9595"}), "input.port",
     "1..65535", "'9595'"),
    ("duplicate class names", unchecked(SHAPE, classes=["a", "b", "a"]), "classes",
     "3 distinct non-empty names", "['a', 'b', 'a']"),
    ("too few class names", unchecked(SHAPE, classes=["a", "b"]), "classes",
     "3 distinct non-empty names", "['a', 'b']"),
    ("empty class name", unchecked(SHAPE, classes=["a", "", "c"]), "classes",
     "3 distinct non-empty names", "['a', '', 'c']"),
    ("threshold above range", unchecked(SHAPE, thresholds=[np.array([0, 0, 2**31, 0, 0, 0]),
                                                            np.zeros(5, np.int64)]),
     "t0", "values in [-2147483648, 2147483647]", "[0, 2147483648]"),
    ("threshold below range", unchecked(SHAPE, thresholds=[np.zeros(6, np.int64),
                                                            np.full(5, -(2**31) - 1)]),
     "t1", "values in [-2147483648, 2147483647]", "[-2147483649, -2147483649]"),
    ("threshold not an integer", unchecked(SHAPE, thresholds=[np.zeros(6), np.zeros(5)]),
     "t0", "integers", "float64"),
    ("threshold shape", unchecked(SHAPE, thresholds=[np.zeros(5, np.int64),
                                                      np.zeros(5, np.int64)]),
     "t0", "shape (6,)", "(5,)"),
    ("scale above range", unchecked(SHAPE, out_scale=np.array([1, 2**16 + 1, 1])),
     "out_scale", "values in [-65536, 65536]", "[1, 65537]"),
    ("scale below range", unchecked(SHAPE, out_scale=np.array([1, -(2**16) - 1, 1])),
     "out_scale", "values in [-65536, 65536]", "[-65537, 1]"),
    ("scale not an integer", unchecked(SHAPE, out_scale=np.array([1.0, 1.5, 1.0])),
     "out_scale", "integers", "float64"),
    ("scale shape", unchecked(SHAPE, out_scale=np.ones(4, np.int64)), "out_scale",
     "shape (3,)", "(4,)"),
    ("bias above range", unchecked(SHAPE, out_bias=np.array([0, 0, 2**40 + 1])),
     "out_bias", "values in [-1099511627776, 1099511627776]", "[0, 1099511627777]"),
    ("bias below range", unchecked(SHAPE, out_bias=np.array([-(2**40) - 1, 0, 0])),
     "out_bias", "values in [-1099511627776, 1099511627776]", "[-1099511627777, 0]"),
    ("bias not an integer", unchecked(SHAPE, out_bias=np.array([0.5, 0, 0])), "out_bias",
     "integers", "float64"),
    ("provenance not an object", unchecked(SHAPE, provenance=["x"]), "provenance",
     "an object", "['x']"),
]


@pytest.mark.parametrize("model,field,expected,actual",
                         [c[1:] for c in MODEL_ERRORS], ids=[c[0] for c in MODEL_ERRORS])
def test_invalid_model_file_is_rejected(tmp_path, model, field, expected, actual):
    path = tmp_path / "bad.npz"
    write(path, *parts(model))
    with pytest.raises(ModelError) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert_field_error(exc, field, expected, actual)


@pytest.mark.parametrize("model,field,expected,actual",
                         [c[1:] for c in MODEL_ERRORS], ids=[c[0] for c in MODEL_ERRORS])
def test_invalid_model_fails_validate(model, field, expected, actual):
    with pytest.raises(ModelError) as exc:
        model.validate()
    assert_field_error(exc, field, expected, actual)


@pytest.mark.parametrize("change,field,expected,actual", [
    (lambda m: setattr(m, "weights", [w.astype(np.int8) for w in m.weights]), "w0",
     "0/1 uint8 bits", "dtype int8"),
    (lambda m: m.weights[1].__setitem__((0, 0), 2), "w1", "0/1 uint8 bits", "max 2"),
    (lambda m: setattr(m, "weights", m.weights[:2]), "weights", "3 layers", "2"),
    (lambda m: setattr(m, "weights", [m.weights[0].T] + m.weights[1:]), "w0",
     "shape (6, 20)", "(20, 6)"),
    (lambda m: setattr(m, "weights", m.weights[:2] + [[[1]]]), "w2", "shape (3, 5)", "list"),
    (lambda m: setattr(m, "thresholds", m.thresholds[:1]), "thresholds", "2 hidden layers",
     "1"),
    (lambda m: setattr(m, "sizes", [20, 6, True, 3]), "layers", "a list of integers",
     "[20, 6, True, 3]"),
], ids=["weights not uint8", "weight bit 2", "missing layer", "transposed weights",
        "weights not an array", "missing thresholds", "bool size"])
def test_validate_rejects_in_memory_only_errors(change, field, expected, actual):
    m = unchecked(SHAPE)
    change(m)
    with pytest.raises(ModelError) as exc:
        m.validate()
    assert_field_error(exc, field, expected, actual)


# --- validation: broken files -----------------------------------------------

def _drop(d, key):
    del d[key]


FILE_ERRORS = [
    # id, change to (header, arrays), field, expected, actual
    ("wrong format", lambda h, a: h.update(format="onnx"), "format", "'xdpnn-bnn'", "'onnx'"),
    ("no format", lambda h, a: h.pop("format"), "format", "'xdpnn-bnn'", "None"),
    ("wrong version", lambda h, a: h.update(version=3), "version", "1 or 2", "3"),
    ("version a string", lambda h, a: h.update(version="1"), "version", "1", "'1'"),
    ("layers too short", lambda h, a: h.update(layers=[20, 3]), "layers",
     "a list of at least 3 positive integers", "[20, 3]"),
    ("layers not integers", lambda h, a: h.update(layers=[20, "6", 5, 3]), "layers",
     "a list of at least 3 positive integers", "[20, '6', 5, 3]"),
    ("layers with a zero", lambda h, a: h.update(layers=[20, 0, 5, 3]), "layers",
     "a list of at least 3 positive integers", "[20, 0, 5, 3]"),
    ("missing array", lambda h, a: _drop(a, "t1"), "arrays",
     "['out_bias', 'out_scale', 't0', 't1', 'w0', 'w1', 'w2']",
     "['out_bias', 'out_scale', 't0', 'w0', 'w1', 'w2']"),
    ("extra array", lambda h, a: a.update(t2=np.zeros(3, np.int64)), "arrays",
     "['out_bias', 'out_scale', 't0', 't1', 'w0', 'w1', 'w2']",
     "['out_bias', 'out_scale', 't0', 't1', 't2', 'w0', 'w1', 'w2']"),
    ("weight rows missing", lambda h, a: a.update(w1=a["w1"][:4]), "w1",
     "packed uint8 of shape (5, 1)", "uint8 (4, 1)"),
    ("weight bytes missing", lambda h, a: a.update(w0=a["w0"][:, :2]), "w0",
     "packed uint8 of shape (6, 3)", "uint8 (6, 2)"),
    ("weights unpacked", lambda h, a: a.update(w0=np.unpackbits(a["w0"], axis=1)), "w0",
     "packed uint8 of shape (6, 3)", "uint8 (6, 24)"),
    ("weights not uint8", lambda h, a: a.update(w2=a["w2"].astype(np.int16)), "w2",
     "packed uint8 of shape (3, 1)", "int16 (3, 1)"),
    ("nonzero padding bit", lambda h, a: a["w0"].__setitem__((5, 2), a["w0"][5, 2] | 1), "w0",
     "zero padding bits past the inputs", "ones"),
    ("nonzero padding bit, 5 inputs", lambda h, a: a["w2"].__setitem__((0, 0), 0x04), "w2",
     "zero padding bits past the inputs", "ones"),
]


@pytest.mark.parametrize("change,field,expected,actual",
                         [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_broken_model_file_is_rejected(tmp_path, change, field, expected, actual):
    header, arrays = parts(unchecked(SHAPE))
    change(header, arrays)
    path = tmp_path / "bad.npz"
    write(path, header, arrays)
    with pytest.raises(ModelError) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert_field_error(exc, field, expected, actual)


@pytest.mark.parametrize("raw,expected", [
    (b"{not json", "expected JSON"),
    (b"\xff\xfe\x00", "expected JSON"),
    (b"[1, 2, 3]", "expected a JSON object, got 'list'"),
    (b"", "expected JSON"),
])
def test_bad_json_header_is_rejected(tmp_path, raw, expected):
    _, arrays = parts(unchecked(SHAPE))
    write(tmp_path / "bad.npz", raw, arrays)
    with pytest.raises(ModelError, match="field 'header': " + re.escape(expected)):
        load(tmp_path / "bad.npz")


def test_file_without_header_is_rejected(tmp_path):
    _, arrays = parts(unchecked(SHAPE))
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelError) as exc:
        load(tmp_path / "bad.npz")
    assert_field_error(exc, "header", "a JSON header array", "'w0'")


@pytest.mark.parametrize("content", [
    b"",
    b"just some text, not a zip archive\n",
    b"PK\x03\x04" + b"\0" * 40,
], ids=["empty", "text", "zip magic only"])
def test_file_that_is_not_a_zip_is_rejected(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=re.escape(f"{path}: not an xdpnn model file")):
        load(path)


def test_single_npy_array_is_rejected(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(4, np.uint8))
    with pytest.raises(ModelError, match=re.escape(f"{path}: not an xdpnn model file")):
        load(path)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path}: not an xdpnn model file")):
        load(tmp_path)


def test_nonexistent_file_is_rejected(tmp_path):
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path / 'none.npz'}: no such file")):
        load(tmp_path / "none.npz")


def _saved(tmp_path) -> bytes:
    random_model([100, 7, 3], seed=1).save(tmp_path / "good.npz")
    return (tmp_path / "good.npz").read_bytes()


def test_every_truncation_is_rejected(tmp_path):
    data = _saved(tmp_path)
    path = tmp_path / "cut.npz"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError, match=re.escape(f"{path}: ")):
            load(path)


def test_corruption_never_escapes_as_another_exception(tmp_path):
    data = _saved(tmp_path)
    path = tmp_path / "flipped.npz"
    for pos in range(len(data)):
        for flip in (0x01, 0x40, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= flip
            path.write_bytes(bytes(damaged))
            try:
                load(path)
            except ModelError:
                pass


class _Payload:
    """Pickled, it recreates itself by calling open(marker, 'w')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("name", ["w0", "extra"])
def test_object_array_is_rejected_not_executed(tmp_path, name):
    header, arrays = parts(unchecked(SHAPE))
    marker = tmp_path / "payload-ran"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    arrays[name] = evil
    path = tmp_path / "evil.npz"
    write(path, header, arrays)
    with pytest.raises(ModelError, match=re.escape(f"{path}: not an xdpnn model file")):
        load(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # the payload is real: pickles run it
        z[name][0].close()
    assert marker.exists()


# --- read once: the hash names the bytes that were parsed -------------------

def test_model_sha256_is_that_of_the_bytes_parsed(tmp_path):
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=1).save(path)
    assert load(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert random_model([100, 7, 3], seed=1).sha256 == ""  # made in memory


def test_attach_record_names_the_model_loaded_not_the_file_now(tmp_path):
    """The file may change between the load and the record (a retrain
    writing it); the record must name what was loaded."""
    from xdpnn.loader import datapath

    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=1).save(path)
    loaded = hashlib.sha256(path.read_bytes()).hexdigest()
    model = datapath.load_model(path)
    random_model([100, 7, 3], seed=2).save(path)
    assert datapath.model_summary(model, path)["sha256"] == loaded


def test_demo_model_loads():
    from importlib import resources
    with resources.as_file(resources.files("xdpnn.models") / "digits-default.npz") as path:
        m = load(path)
    assert m.shape == "256-128-10" and m.classes == [str(k) for k in range(10)]


# --- loader/layout.py: the model as u64 words in a map value ----------------

@pytest.mark.parametrize("i", [0, 1, 7, 8, 15, 56, 63, 64, 71, 99])
def test_pack_rows_puts_bit_i_where_the_packet_load_has_it(i):
    row = np.zeros((1, 100), np.uint8)
    row[0, i] = 1
    words = layout.pack_rows(row)
    assert words.shape == (1, 2) and words.dtype == np.dtype("<u8")
    want = [0, 0]
    want[i // 64] = 1 << (8 * (i % 64 // 8) + 7 - i % 8)
    assert words[0].tolist() == want


@pytest.mark.parametrize("n", [1, 8, 13, 64, 65, 100, 777, 1024])
def test_pack_rows_bytes_are_the_payload_bytes(n):
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, (3, n), dtype=np.uint8)
    words = layout.pack_rows(bits)
    assert words.shape == (3, layout.words(n))
    for row, w in zip(bits, words):
        assert w.tobytes() == reference.bytes_from_bits(row).ljust(8 * layout.words(n), b"\0")


@pytest.mark.parametrize("n,mask", [
    (1, 0x80),
    (7, 0xFE),
    (8, 0xFF),
    (9, 0x80FF),
    (16, 0xFFFF),
    (36, 0xF0FFFFFFFF),
    (63, 0xFEFFFFFFFFFFFFFF),
    (64, 0xFFFFFFFFFFFFFFFF),
    (65, 0x80),
    (100, 0xF0FFFFFFFF),
    (128, 0xFFFFFFFFFFFFFFFF),
])
def test_tail_mask(n, mask):
    assert layout.tail_mask(n) == mask


@pytest.mark.parametrize("sizes,want", [
    ([100, 7, 3], {"L0_W": 0, "L0_T": 14, "OUT_W": 21, "OUT_SCALE": 24, "OUT_BIAS": 27,
                   "MODEL_WORDS": 30}),
    ([64, 1, 2], {"L0_W": 0, "L0_T": 1, "OUT_W": 2, "OUT_SCALE": 4, "OUT_BIAS": 6,
                  "MODEL_WORDS": 8}),
    ([784, 256, 256, 10], {"L0_W": 0, "L0_T": 3328, "L1_W": 3584, "L1_T": 4608,
                           "OUT_W": 4864, "OUT_SCALE": 4904, "OUT_BIAS": 4914,
                           "MODEL_WORDS": 4924}),
    ([65, 65, 65, 65, 65, 2], {"L0_W": 0, "L0_T": 130, "L1_W": 195, "L1_T": 325,
                               "L2_W": 390, "L2_T": 520, "L3_W": 585, "L3_T": 715,
                               "OUT_W": 780, "OUT_SCALE": 784, "OUT_BIAS": 786,
                               "MODEL_WORDS": 788}),
])
def test_offsets(sizes, want):
    assert layout.offsets(sizes, layout.horizontal(sizes)) == want


@pytest.mark.parametrize("sizes", [[100, 7, 3], [64, 1, 2], [777, 65, 33, 9],
                                   [256, 32, 16, 8, 4, 64], [1024, 512, 512, 10]])
def test_model_words_places_each_array_at_its_offset(sizes):
    m = random_model(sizes, seed=2)
    flat = layout.model_words(m, layout.horizontal(sizes))
    off = layout.offsets(sizes, layout.horizontal(sizes))
    assert flat.size == off["MODEL_WORDS"] and flat.dtype == np.dtype("<u8")
    as_int = flat.view("<i8")
    names = [f"L{l}" for l in range(len(sizes) - 2)] + ["OUT"]
    for l, name in enumerate(names):
        w = layout.pack_rows(m.weights[l]).ravel()
        assert np.array_equal(flat[off[f"{name}_W"]:off[f"{name}_W"] + w.size], w)
        if name != "OUT":
            t = m.thresholds[l]
            assert np.array_equal(as_int[off[f"{name}_T"]:off[f"{name}_T"] + t.size], t)
    k = sizes[-1]
    assert np.array_equal(as_int[off["OUT_SCALE"]:off["OUT_SCALE"] + k], m.out_scale)
    assert np.array_equal(as_int[off["OUT_BIAS"]:off["OUT_BIAS"] + k], m.out_bias)
