"""Multi-bit first-layer inputs (model format version 2): the format, the
reference's arithmetic, and the kernel's bit-plane layer against the
reference on random inputs (docs/model-format.md, "Multi-bit inputs")."""
from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest

from cli import xdpnn
from xdpnn.loader import layout, testrun
from xdpnn.trainer import reference
from xdpnn.trainer.model import (MULTIBIT_VERSION, Model, ModelError, load, loads,
                                 random_model)

SAMPLES = 5000
root = pytest.mark.root  # loads BPF programs


# --- the reference ------------------------------------------------------------

def test_values_from_bytes_mask_and_sign():
    data = bytes([0x00, 0x05, 0x0F, 0xF7, 0x80, 0xFF])
    assert reference.values_from_bytes(data, 6, 4, False).tolist() == [0, 5, 15, 7, 0, 15]
    assert reference.values_from_bytes(data, 6, 4, True).tolist() == [0, 5, -1, 7, 0, -1]
    assert reference.values_from_bytes(data, 6, 8, True).tolist() == [0, 5, 15, -9, -128, -1]
    assert reference.values_from_bytes(data, 6, 2, True).tolist() == [0, 1, -1, -1, 0, -1]
    assert reference.values_from_bytes(data, 4, 8, False).tolist() == [0, 5, 15, 247]


def test_first_layer_by_hand():
    # x = (3, -2, 1), w = (+1, -1, -1): a = 3 + 2 - 1 = 4
    m = Model(sizes=[3, 1, 2], weights=[np.array([[1, 0, 0]], np.uint8),
                                        np.array([[1], [0]], np.uint8)],
              thresholds=[np.array([4], np.int64)], out_scale=np.array([1, 1], np.int64),
              out_bias=np.array([0, 0], np.int64),
              input={"mode": "payload", "bits": 3, "signed": True}).validate()
    x = np.array([[3, -2, 1], [3, -2, 2]])
    assert reference.value_dot(x, m.weights[0]).tolist() == [[4], [3]]
    assert reference.predict(m, x).tolist() == [0, 1]  # fires at a = 4, not at 3
    with pytest.raises(ValueError, match=r"\[-4, 3\]"):
        reference.predict(m, np.array([[4, 0, 0]]))


@pytest.mark.parametrize("k", range(2, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_planes_equal_the_integer_dot(k, signed):
    m = random_model([77, 30, 3], seed=k, input_bits=k, signed=signed)
    x = reference.random_inputs(m, np.random.default_rng(k), 2000)
    assert (reference.planes_dot(x, m.weights[0], k, signed)
            == reference.value_dot(x, m.weights[0])).all()
    # and through the bytes a packet carries
    row = x[7]
    raw = np.unpackbits(np.frombuffer(reference.input_bytes(m, row), np.uint8))
    assert reference.model_input(m, raw).tolist() == row.tolist()


def test_kernel_limits_are_the_rearranged_thresholds():
    m = random_model([20, 9, 2], seed=2, input_bits=5, signed=True)
    u = layout.multibit_limits(m)
    x = reference.random_inputs(m, np.random.default_rng(0), 500)
    c = reference.plane_weights(5, True)
    d = np.stack([((x[:, None, :] & 31) >> p & 1) ^ m.weights[0][None].astype(np.int64)
                  for p in range(5)]).sum(-1)
    e = np.tensordot(c, d, axes=1)
    assert ((e <= u) == (reference.value_dot(x, m.weights[0]) >= m.thresholds[0])).all()


# --- the file format ----------------------------------------------------------

@pytest.mark.parametrize("k,signed,mode", [(2, False, "payload"), (8, True, "payload"),
                                           (5, True, "headers"), (8, False, "headers")])
def test_round_trip(tmp_path, k, signed, mode):
    m = random_model([32, 12, 4], seed=1, mode=mode, input_bits=k, signed=signed)
    m.save(tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    assert back.input == m.input and back.input_bits == k and back.input_signed == signed
    assert all((a == b).all() for a, b in zip(back.weights, m.weights))
    assert (back.thresholds[0] == m.thresholds[0]).all()
    header = header_of(tmp_path / "m.npz")
    assert header["version"] == MULTIBIT_VERSION
    assert header["input"]["bits"] == k and header["input"]["signed"] is signed


def test_binary_models_stay_version_1(tmp_path):
    random_model([20, 6, 3], seed=1).save(tmp_path / "b.npz")
    header = header_of(tmp_path / "b.npz")
    assert header["version"] == 1 and "bits" not in header["input"]
    assert load(tmp_path / "b.npz").input_bits == 1


def header_of(path) -> dict:
    with zipfile.ZipFile(path) as z, z.open("header.npy") as f:
        return json.loads(np.load(f).tobytes())


def with_header(path, change) -> bytes:
    """The file at path with its JSON header changed by change(header)."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(out, "w") as w:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "header.npy":
                h = json.loads(np.load(io.BytesIO(data)).tobytes())
                change(h)
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(h).encode(), np.uint8))
                data = buf.getvalue()
            w.writestr(info.filename, data)
    return out.getvalue()


def _set(**kv):
    def change(h):
        for key, value in kv.items():
            if key == "version":
                h["version"] = value
            elif value is _DROP:
                h["input"].pop(key)
            else:
                h["input"][key] = value
    return change


_DROP = object()

HOSTILE = {
    "bits-0": (_set(bits=0), "input.bits"),
    "bits-9": (_set(bits=9), "input.bits"),
    "bits-string": (_set(bits="8"), "input.bits"),
    "bits-float": (_set(bits=8.0), "input.bits"),
    "bits-true": (_set(bits=True), "input.bits"),
    "bits-null": (_set(bits=None), "input.bits"),
    "bits-list": (_set(bits=[8]), "input.bits"),
    "signed-string": (_set(signed="yes"), "input.signed"),
    "signed-int": (_set(signed=1), "input.signed"),
    "signed-binary": (_set(bits=1, signed=True), "input.signed"),
    "no-bits-in-v2": (_set(bits=_DROP), "input.bits"),
    "no-signed-in-v2": (_set(signed=_DROP), "input.bits"),
    "bits-in-v1": (_set(version=1), "version 2"),
    "version-3": (_set(version=3), "version"),
    "flow-mode": (_set(mode="flow"), "input.mode"),
    "headers-too-many": (_set(mode="headers"), "1..32 in headers mode"),
}


@pytest.fixture
def v2_file(tmp_path):
    path = tmp_path / "v2.npz"
    random_model([40, 6, 3], seed=4, input_bits=8, signed=True).save(path)
    return path


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_v2_headers_are_refused(tmp_path, v2_file, case):
    change, names = HOSTILE[case]
    data = with_header(v2_file, change)
    with pytest.raises(ModelError, match=names.replace(".", r"\.")):
        loads(data)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data)
    r = xdpnn("model", "show", bad)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr
    assert names.split()[0] in r.stderr


# --- the kernel against the reference -------------------------------------------

def check(model, samples=SAMPLES, seed=0):
    res = testrun.verify(model, samples, seed=seed)
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 2
    return res


@root
@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("mode,shape", [("payload", [100, 40, 4]), ("headers", [32, 24, 4])])
def test_kernel_equals_reference(k, signed, mode, shape):
    check(random_model(shape, seed=k, mode=mode, input_bits=k, signed=signed))


@root
@pytest.mark.parametrize("shape,k,signed,mode", [
    ([1, 5, 2], 8, True, "payload"),          # one input byte
    ([9, 70, 30, 3], 3, False, "payload"),    # two output words, a second hidden layer
    ([64, 16, 5], 7, True, "payload"),        # exactly one plane word
    ([65, 16, 5], 6, False, "payload"),       # one input past a plane word
    ([7, 8, 8, 8, 2], 5, True, "headers"),    # four hidden layers
])
def test_kernel_shapes(shape, k, signed, mode):
    check(random_model(shape, seed=11, mode=mode, input_bits=k, signed=signed), samples=2000)


@root
def test_largest_multibit_model_verifies():
    """128 8-bit inputs and the largest hidden layers: within the verifier's
    budget (docs/model-format.md, "Limits")."""
    res = check(random_model([128, 512, 512, 512, 512, 64], seed=1, input_bits=8, signed=True),
                samples=300)
    assert res["verified_insns"] < 1_000_000


def test_binary_builds_have_no_multibit_flags():
    flags = layout.cflags(random_model([100, 20, 3], seed=1))
    assert not any("NN_IN_VALUE_BITS" in f or "NN_IN_SIGNED" in f for f in flags)
    mb = layout.cflags(random_model([100, 20, 3], seed=1, input_bits=4))
    assert "-DNN_IN_VALUE_BITS=4" in mb and "-DNN_IN_BYTES=100" in mb


@root
def test_predict_shows_the_kernels_input_values(tmp_path, build):
    from xdpnn.traffic import packets
    m = random_model([24, 16, 3], seed=3, input_bits=6, signed=True)
    prog = build(m, record_input=True)
    runner = testrun.Runner(prog, 9595)
    rng = np.random.default_rng(5)
    for _ in range(20):
        payload = rng.integers(0, 256, 24, dtype=np.uint8).tobytes()  # bits above 6 too
        out = runner.run(packets.request(payload, 9595))
        _, cls, values = testrun.expected(m, packets.request(payload, 9595), 9595)
        assert out.bits.tolist() == values.tolist()
        assert out.cls == cls


# --- the command line -----------------------------------------------------------

@root
def test_verify_command_with_input_bits():
    r = xdpnn("-j", "verify", "--shape", "48-20-3", "--input-bits", "4", "--signed",
              "--samples", "500", check=True)
    res = json.loads(r.stdout)
    assert res["mismatches"] == 0 and res["input_bits"] == 4 and res["input_signed"] is True


@pytest.mark.parametrize("args,code,names", [
    (["--input-bits", "9"], 2, ["--input-bits 9", "1..8"]),
    (["--input-bits", "x"], 2, ["--input-bits x"]),
    (["--signed"], 3, ["input.signed", "false with 1-bit"]),
    (["--input-bits", "8", "--input", "headers"], 3, ["1..32 in headers mode"]),
])
def test_model_random_bad_input_bits(tmp_path, args, code, names):
    r = xdpnn("model", "random", "64-8-3", "--out", tmp_path / "m.npz", *args)
    assert r.returncode == code, r.stderr
    assert all(n in r.stderr for n in names), r.stderr
    assert not (tmp_path / "m.npz").exists()


def test_serve_userspace_refuses_multibit_models(v2_file):
    r = xdpnn("serve-userspace", "--model", v2_file)
    assert r.returncode == 3 and "8-bit inputs" in r.stderr, r.stderr


# --- QONNX export -------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_exported_graph_runs_in_qonnx_to_the_reference_scores(k, signed):
    pytest.importorskip("qonnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")
    from xdpnn.trainer import onnx_import
    m = random_model([50, 20, 8, 4], seed=k, input_bits=k, signed=signed)
    g = onnx_import.export_graph(m)
    assert g.graph.node[0].op_type == "Quant"
    x = reference.random_inputs(m, np.random.default_rng(k), 2000)
    scores = onnx_import.run_graph(g, {"input": x.astype(np.float32)})["scores"]
    assert (scores == reference.scores(m, x)).all()


def test_export_then_import_gives_the_model_back(tmp_path, v2_file):
    pytest.importorskip("qonnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")
    xdpnn("export", v2_file, "--out", tmp_path / "m.onnx", check=True)
    xdpnn("import", tmp_path / "m.onnx", "--out", tmp_path / "back.npz", check=True)
    m, back = load(v2_file), load(tmp_path / "back.npz")
    assert back.input == m.input and back.sizes == m.sizes
    x = reference.random_inputs(m, np.random.default_rng(1), 2000)
    assert (reference.predict(back, x) == reference.predict(m, x)).all()


def quant_graph(sizes, seed, k, signed, scale):
    """Brevitas style with a k-bit Quant on the input: Quant(scale, zero point
    0, bitwidth k) -> (MatMul of BipolarQuant weights -> batch norm ->
    BipolarQuant)* -> MatMul -> batch norm (scores)."""
    from onnx_graphs import Q, Builder
    b = Builder(sizes[0], seed)
    x = b.node("Quant", ["input", b.const(scale), b.const(0.0), b.const(float(k))], domain=Q,
               signed=int(signed), narrow=0, rounding_mode="ROUND")
    for l, (i, o) in enumerate(zip(sizes, sizes[1:])):
        w = b.node("BipolarQuant", [b.const(b.rng.normal(0, 1, (i, o))), b.const(0.5)],
                   domain=Q)
        output = l == len(sizes) - 2
        x = b.batchnorm(b.node("MatMul", [x, w]), o, i, 1e-4 if output else None)
        if not output:
            x = b.node("BipolarQuant", [x, b.const(2.0)], domain=Q)
    return b.model("input", x, sizes[-1])


@pytest.mark.parametrize("k,signed,scale", [(2, False, 1.0), (4, True, 0.25),
                                            (8, False, 1 / 255), (8, True, 0.125)])
def test_imported_quant_input_matches_qonnx(k, signed, scale):
    """qonnx's executor is the reference: the imported model's class equals
    the graph's on 2,000 random k-bit inputs (fed as integer times scale)."""
    pytest.importorskip("qonnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")
    from xdpnn.trainer import onnx_import
    g = quant_graph([24, 16, 5], seed=k, k=k, signed=signed, scale=scale)
    m = onnx_import.import_graph(g)
    assert m.input_bits == k and m.input_signed == signed
    x = reference.random_inputs(m, np.random.default_rng(k), 2000)
    want = onnx_import.framework_classes(g, x)
    assert len(np.unique(want)) >= 2
    assert (reference.predict(m, x) == want).all()


@root
def test_kernel_equals_qonnx_on_an_imported_quant_graph():
    pytest.importorskip("qonnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")
    from xdpnn.trainer import onnx_import
    g = quant_graph([32, 20, 4], seed=3, k=8, signed=True, scale=0.5)
    m = onnx_import.import_graph(g)
    res = testrun.verify(m, 2000, oracle=lambda x: onnx_import.framework_classes(g, x))
    assert res["mismatches"] == 0, res["examples"]


# --- the trainer ------------------------------------------------------------------

@pytest.mark.parametrize("k,signed", [(4, False), (8, True)])
def test_training_a_multibit_first_layer(tmp_path, k, signed):
    from xdpnn.trainer import data, train
    ds = data.load("digits", input_bits=k, signed=signed)
    lo, hi = (-(2 ** (k - 1)), 2 ** (k - 1) - 1) if signed else (0, 2 ** k - 1)
    assert ds.bits.shape == (1797, 64) and ds.bits.min() == lo and ds.bits.max() == hi
    m = train.train(ds, train.Config(hidden=[32], epochs=4, seed=1))
    report = m.provenance["report"]
    assert m.input_bits == k and m.input_signed == signed and m.sizes == [64, 32, 10]
    # the fold over -M n .. M n reproduces the trained network on every test sample
    assert report["exported_equals_binarized"], report["accuracy"]
    assert report["accuracy"]["exported"] > 0.5
    m.save(tmp_path / "d.npz")
    test = train.labeled_test_set(load(tmp_path / "d.npz"))  # the same split, as values
    acc = (reference.predict(m, test.bits) == test.labels).mean()
    assert round(float(acc), 4) == report["accuracy"]["exported"]


def test_multibit_training_is_digits_only():
    from xdpnn.trainer import data
    with pytest.raises(data.DataError, match="digits only"):
        data.load("traffic", input_bits=8)
    with pytest.raises(data.DataError, match="--levels"):
        data.load("digits", levels=2, input_bits=8)


# --- attached to an interface: real packets -----------------------------------------

@pytest.mark.netns
@root
def test_attached_multibit_model_counts_each_class_and_swaps(tmp_path):
    """Requests of random bytes (bits above k too) from a generator namespace
    through the attached program: its class counters equal the reference's.
    A swap takes another model with the same input bits, not a binary one."""
    import os

    from xdpnn.traffic import packets
    from xdpnn.traffic.sender import send_frames
    from xdpnn.traffic.sink import Sink
    from xdpnn.traffic.topology import Topology

    m = random_model([40, 24, 4], seed=6, input_bits=5, signed=True)
    m.save(tmp_path / "m.npz")
    random_model([40, 24, 4], seed=7, input_bits=5, signed=True).save(tmp_path / "m2.npz")
    random_model([40, 24, 4], seed=7).save(tmp_path / "binary.npz")
    payloads = np.random.default_rng(3).integers(0, 256, (200, 40), dtype=np.uint8)
    frames = [packets.request(p.tobytes(), 9595) for p in payloads]
    x = np.stack([reference.values_from_bytes(p.tobytes(), 40, 5, True) for p in payloads])
    with Topology(f"xm{os.getpid() % 10000}") as t, Sink(t.sink, "s0"), Sink(t.gen, "g0"):
        try:
            xdpnn("-n", t.dut, "attach", "d0", "--peer", "d1", "--model", tmp_path / "m.npz",
                  check=True)
            assert send_frames(t.gen, "g0", frames) == 200
            deadline = time.monotonic() + 5  # veth delivery is asynchronous
            while True:
                s = json.loads(xdpnn("-n", t.dut, "-j", "stats", "d0", check=True).stdout)
                if s["input"]["classified"] >= 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert s["input"]["classified"] == 200
            want = np.bincount(reference.predict(m, x), minlength=4)
            assert list(s["classes"].values()) == want.tolist()

            r = xdpnn("-n", t.dut, "swap", "d0", "--model", tmp_path / "binary.npz")
            assert r.returncode == 2 and "binary inputs" in r.stderr, r.stderr
            xdpnn("-n", t.dut, "swap", "d0", "--model", tmp_path / "m2.npz", check=True)
        finally:
            xdpnn("-n", t.dut, "detach", "d0")
