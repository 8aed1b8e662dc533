"""`xdpnn import` and `xdpnn export`: the framework is the reference.

Graphs are built with onnx's helper API (tests/onnx_graphs.py) and run by
the framework: qonnx's executor for QONNX graphs, onnxruntime for plain
ONNX.  The imported model must give the framework's class: in the kernel
(BPF_PROG_TEST_RUN, 10,000 inputs per model) and in the reference (many
random graphs, no compile).  Exported graphs must run in qonnx to the
reference's classes, and import back to the same model.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")
pytest.importorskip("qonnx", reason="pip install '.[onnx]' (onnx, qonnx, onnxruntime)")

from onnx import helper  # noqa: E402

import onnx_graphs as G  # noqa: E402
from xdpnn.loader import cli, errors  # noqa: E402
from xdpnn.trainer import onnx_import as I  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import load, random_model  # noqa: E402


def onnxruntime_classes(model, bits):
    """Plain ONNX: onnxruntime itself, one batch, argmax (first maximum)."""
    import onnxruntime
    name = model.graph.input[0].name
    g = onnx.ModelProto()
    g.CopyFrom(model)
    for vi in list(g.graph.input) + list(g.graph.output):  # a free batch dimension
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    sess = onnxruntime.InferenceSession(g.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    scores = sess.run(None, {name: bits.astype(np.float32) * 2 - 1})[0]
    return np.argmax(scores, axis=1)


KERNEL_CASES = [  # (id, graph, input mode, framework); Brevitas style: through the CLI below
    ("brevitas-headers-200-40-8", lambda: G.brevitas_style([200, 40, 8], 6, scale=1.0),
     "headers", "qonnx"),
    ("finn-binary-200-24-6", lambda: G.finn_streamlined([200, 24, 6], 3, "BINARY"), "payload",
     "qonnx"),
    ("onnx-sign-gemm-63-31-17-4", lambda: G.plain_onnx([63, 31, 17, 4], 4), "payload",
     "onnxruntime"),
]


@pytest.mark.root
def test_verify_graph_compares_the_kernel_with_qonnx(tmp_path, capsys):
    onnx.save(G.brevitas_style([64, 32, 16, 10], 1), tmp_path / "g.onnx")
    assert cli.main(["import", str(tmp_path / "g.onnx"), "--out", str(tmp_path / "m.npz")]) == 0
    capsys.readouterr()
    assert cli.main(["-j", "verify", "--model", str(tmp_path / "m.npz"), "--graph",
                     str(tmp_path / "g.onnx"), "--samples", "10000"]) == 0
    rep = __import__("json").loads(capsys.readouterr().out)
    assert rep["against"] == "graph" and rep["samples"] == 10000 and rep["mismatches"] == 0
    assert rep["classes_seen"] >= 2


@pytest.mark.root
@pytest.mark.parametrize("graph,mode,framework", [c[1:] for c in KERNEL_CASES],
                         ids=[c[0] for c in KERNEL_CASES])
def test_kernel_class_equals_the_frameworks(graph, mode, framework):
    from xdpnn.loader import testrun
    g = graph()
    model = I.import_graph(g, input_mode=mode)
    oracle = ((lambda bits: I.framework_classes(g, bits)) if framework == "qonnx"
              else (lambda bits: onnxruntime_classes(g, bits)))
    res = testrun.verify(model, 10_000, seed=5, oracle=oracle)
    assert res["mismatches"] == 0, res["examples"]
    assert res["classes_seen"] >= 2


@pytest.mark.parametrize("seed", range(6))
def test_reference_equals_the_framework_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    hidden = [int(h) for h in rng.integers(1, 40, rng.integers(1, 4))]
    sizes = [int(rng.integers(2, 300))] + hidden + [int(rng.integers(2, 12))]
    for g in (G.brevitas_style(sizes, seed, scale=float(rng.choice([1.0, 0.25, 4.0]))),
              G.finn_streamlined(sizes, seed, "BIPOLAR" if seed % 2 else "BINARY",
                                 "BINARY" if seed % 3 == 0 else "BIPOLAR")):
        model = I.import_graph(g)
        assert model.sizes == sizes
        bits = rng.integers(0, 2, (4000, sizes[0]), dtype=np.uint8)
        want = I.framework_classes(g, bits)
        assert (reference.predict(model, bits) == want).all()


def test_plain_onnx_reference_equals_onnxruntime():
    g = G.plain_onnx([95, 33, 9, 7], 8)
    model = I.import_graph(g)
    assert model.provenance["output"] == "integers"  # Gemm's integer biases kept exactly
    bits = np.random.default_rng(1).integers(0, 2, (5000, 95), dtype=np.uint8)
    assert (reference.predict(model, bits) == onnxruntime_classes(g, bits)).all()


def one_layer(gamma, beta, mean, var, eps, fan_in=9):
    """Input -> MatMul (all +1 weights) -> batch norm -> BipolarQuant -> 2 classes."""
    b = G.Builder(fan_in, 0)
    units = len(gamma)
    x = b.node("MatMul", ["input", b.const(np.ones((fan_in, units)))])
    x = b.node("BatchNormalization", [x] + [b.const(v) for v in (gamma, beta, mean, var)],
               epsilon=eps)
    x = b.node("BipolarQuant", [x, b.const(1.0)], domain=G.Q)
    x = b.node("MatMul", [x, b.const(b.signs((units, 2)))])
    return b.model("input", x, 2, annotate="BIPOLAR")


def test_batch_norm_edge_cases_fold_like_the_trainer():
    # units: plain, negative gamma, gamma 0 with beta >= 0 and < 0, zero
    # variance without epsilon, mean on a reachable dot product (a tie)
    gamma = [1.0, -1.0, 0.0, 0.0, 2.0, 1.0]
    beta = [0.0, 0.0, 0.0, -1.0, 0.0, 0.0]
    mean = [2.5, 2.5, 0.0, 0.0, 3.0, 3.0]
    var = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    m = I.import_graph(one_layer(gamma, beta, mean, var, 0.0))
    t, w = m.thresholds[0], m.weights[0]
    assert t[0] == 3 and w[0].all()              # a >= 2.5: first odd a is 3
    assert t[1] == -1 and not w[1].any()          # a <= 2.5: bits flipped, -a >= -1
    assert t[2] == -9 and t[3] == 10              # constant units: always, never
    # var = eps = 0: onnxruntime folds batch norm to a * inf + (-inf), NaN or
    # -inf for every a, which BipolarQuant maps to -1: the framework's unit
    # never fires (the trainer's formula would give a >= 5), and neither does
    # the import's
    assert t[4] == 10
    assert t[5] == 3 and w[5].all()               # a = 3 gives 0 and BipolarQuant(0) = +1
    bits = np.random.default_rng(0).integers(0, 2, (3000, 9), dtype=np.uint8)
    g = one_layer(gamma, beta, mean, var, 0.0)
    assert (reference.predict(m, bits) == I.framework_classes(g, bits)).all()


def sign_tie():
    b = G.Builder(8, 0)  # even fan-in, no offset: a = 0 is reachable and Sign(0) = 0
    x = b.node("Sign", ["input"])
    x = b.node("Sign", [b.node("MatMul", [x, b.const(b.signs((8, 4)))])])
    return b.model("input", b.node("MatMul", [x, b.const(b.signs((4, 2)))]), 2)


def replace_node(g, index, node):
    g.graph.node[index].CopyFrom(node)
    return g


def broken(kind):
    g = G.finn_streamlined([16, 8, 3], 1)
    nodes = g.graph.node
    if kind == "relu":
        t = nodes[1].output[0]
        return replace_node(g, 1, helper.make_node("Relu", [nodes[0].output[0]], [t], name="r"))
    if kind == "weights":
        w = next(i for i in g.graph.initializer if i.name == nodes[0].input[1])
        arr = onnx.numpy_helper.to_array(w).copy()
        arr[3, 2] = 0.5
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return g
    if kind == "thresholds":
        t = next(i for i in g.graph.initializer if i.name == nodes[1].input[1])
        t.CopyFrom(onnx.numpy_helper.from_array(np.zeros((8, 3), np.float32), t.name))
        return g
    if kind == "branch":
        g.graph.node.append(helper.make_node("Relu", [nodes[0].output[0]], ["extra"]))
        return g
    if kind == "annotation":
        del g.graph.quantization_annotation[:]
        return g
    if kind == "units":
        return G.finn_streamlined([16, 2100, 3], 1)
    if kind == "sign-tie":
        return sign_tie()
    if kind == "constant-op":  # a hostile graph asks for a 16 TB constant
        g.graph.initializer.append(onnx.numpy_helper.from_array(
            np.array([1 << 21, 1 << 21], np.int64), "huge_shape"))
        g.graph.node.insert(0, helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"],
                                                name="bomb"))
        return g
    if kind == "operand-shape":  # an Add whose operand differs per batch row
        g.graph.initializer.append(onnx.numpy_helper.from_array(
            np.zeros((2, 8), np.float32), "rows"))
        nodes[1].input[0] = "shifted"
        g.graph.node.insert(1, helper.make_node("Add", [nodes[0].output[0], "rows"],
                                                ["shifted"], name="shift"))
        return g
    if kind == "data-operand":  # an Add of two data tensors: not elementwise per unit
        nodes[1].input[0] = "loop"
        g.graph.node.append(helper.make_node("Identity", [nodes[0].output[0]], ["x1"]))
        g.graph.node.append(helper.make_node("Add", ["x1", "loop"], ["loop"], name="back"))
        return g
    raise AssertionError(kind)


ERROR_CASES = [  # (kind, words the one-line error must hold)
    ("relu", ["node 'r' (Relu)", "unsupported op"]),
    ("weights", ["(MatMul)", "non-binary weights for unit 2", "0.5"]),
    ("thresholds", ["(MultiThreshold)", "3 thresholds per channel"]),
    ("branch", ["used by 2 nodes", "only a chain"]),
    ("annotation", ["input 'input'", "no BIPOLAR or BINARY annotation"]),
    ("units", ["(MatMul)", "layer 0 beyond the format's limits", "1..2048"]),
    ("sign-tie", ["(Sign)", "at dot product 0", "Sign(0) is 0"]),
    ("constant-op", ["node 'bomb' (ConstantOfShape)", "unsupported op"]),
    ("operand-shape", ["node 'shift' (Add)", "operand 'rows' of shape (2, 8)"]),
    ("data-operand", ["node 'back' (Add)", "operand 'loop' is not constant"]),
]


@pytest.mark.parametrize("kind,words", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_graphs_get_one_line_naming_the_node(kind, words, tmp_path, capsys):
    src = tmp_path / "g.onnx"
    onnx.save(broken(kind), src)
    out = tmp_path / "m.npz"
    code = cli.main(["import", str(src), "--out", str(out)])
    o, e = capsys.readouterr()
    assert code == errors.GraphError.exit_code, e
    assert o == "" and e.count("\n") == 1 and e.startswith("xdpnn: import: "), e
    for w in words:
        assert w in e, e
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]  # nothing written


def test_import_errors_leave_an_existing_output_alone(tmp_path, capsys):
    out = tmp_path / "m.npz"
    out.write_bytes(b"before")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    assert cli.main(["import", str(tmp_path / "bad.onnx"), "--out", str(out)]) == \
        errors.GraphError.exit_code
    assert "not an ONNX model" in capsys.readouterr().err
    assert out.read_bytes() == b"before"
    onnx.save(G.finn_streamlined([16, 8, 3], 1), tmp_path / "g.onnx")
    assert cli.main(["import", str(tmp_path / "g.onnx"), "--out", str(out),
                     "--classes", "a,b"]) == errors.UsageError.exit_code
    assert "--classes: 2 names, the graph has 3 classes" in capsys.readouterr().err
    assert out.read_bytes() == b"before"


def test_import_command_writes_a_model_file(tmp_path, capsys):
    onnx.save(G.finn_streamlined([40, 8, 3], 1), tmp_path / "g.onnx")
    out = tmp_path / "m.npz"
    assert cli.main(["-j", "import", str(tmp_path / "g.onnx"), "--out", str(out), "--input",
                     "headers", "--classes", "benign,scan,flood"]) == 0
    rep = __import__("json").loads(capsys.readouterr().out)
    assert rep["shape"] == "40-8-3" and rep["input"] == {"mode": "headers"}
    m = load(out)
    assert m.classes == ["benign", "scan", "flood"] and m.provenance["source"] == "onnx"


def canonical(t, n):
    """The threshold import finds: the first dot product that fires (a has
    n's parity), -n for always, n + 1 for never."""
    t = np.clip(t, -n, n + 1)
    return np.where(t > n, n + 1, t + (t + n) % 2)


EXPORT_CASES = [([100, 16, 4], "payload"), ([256, 32, 16, 10], "headers"),
                ([9, 3, 3, 3, 3, 2], "payload")]


@pytest.mark.parametrize("sizes,mode", EXPORT_CASES, ids=[f"{c[0]}" for c in EXPORT_CASES])
def test_exported_graph_runs_in_qonnx_to_the_reference_classes(sizes, mode, tmp_path):
    m = random_model(sizes, seed=len(sizes), mode=mode)
    m.out_bias[0] = 2**40 - 1  # scores past float32's exact range stay exact (float64)
    m.out_bias[1] = 2**40 - 2
    path = tmp_path / "m.npz"
    m.save(path)
    assert cli.main(["export", str(path), "--out", str(tmp_path / "m.onnx")]) == 0
    g = I.load_graph(tmp_path / "m.onnx")
    bits = np.random.default_rng(2).integers(0, 2, (3000, sizes[0]), dtype=np.uint8)
    assert (I.framework_classes(g, bits) == reference.predict(m, bits)).all()
    back = I.import_graph(g)  # and back: the same model, mode and classes
    assert back.sizes == m.sizes and back.input == m.input and back.classes == m.classes
    for a, b in zip(back.weights, m.weights):
        assert (a == b).all()
    for a, b, n in zip(back.thresholds, m.thresholds, m.sizes):
        assert (a == canonical(b, n)).all()
    assert (back.out_scale == m.out_scale).all() and (back.out_bias == m.out_bias).all()


def test_flatten_at_the_input_and_weights_computed_from_constants():
    b = G.Builder(16, 3)
    x = b.node("Flatten", ["input"], axis=1)
    x = b.node("BipolarQuant", [x, b.const(1.0)], domain=G.Q)
    w = b.node("Transpose", [b.const(b.signs((8, 16)))], perm=[1, 0])
    x = b.node("BipolarQuant", [b.node("MatMul", [x, w]), b.const(1.0)], domain=G.Q)
    m = b.model("input", b.node("MatMul", [x, b.const(b.signs((8, 3)))]), 3)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                            [1, 1, 4, 4]))
    model = I.import_graph(m)
    assert model.sizes == [16, 8, 3]
    bits = np.random.default_rng(0).integers(0, 2, (2000, 16), dtype=np.uint8)
    assert (reference.predict(model, bits) == I.framework_classes(m, bits)).all()


def test_weights_from_a_chain_of_constant_nodes():
    b = G.Builder(12, 5)
    w = b.signs((5, 12)) * 3  # ±3: the scale goes into the threshold
    b.nodes.append(helper.make_node("Constant", [], ["wc"], value=onnx.numpy_helper.from_array(w)))
    wt = b.node("Transpose", ["wc"], perm=[1, 0])
    x = b.node("BipolarQuant", [b.node("MatMul", ["input", wt]), b.const(1.0)], domain=G.Q)
    m = b.model("input", b.node("MatMul", [x, b.const(b.signs((5, 2)))]), 2, annotate="BIPOLAR")
    model = I.import_graph(m)
    bits = np.random.default_rng(0).integers(0, 2, (2000, 12), dtype=np.uint8)
    assert (reference.predict(model, bits) == I.framework_classes(m, bits)).all()
