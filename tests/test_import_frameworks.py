"""A network trained in a framework, exported, imported: same classes.

Each test is skipped where its framework is not installed (CI does not
install them): Brevitas needs torch, Larq needs TensorFlow (README,
"Models from other frameworks").
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

BREVITAS = ("needs torch, brevitas and onnxoptimizer: pip install torch brevitas onnxoptimizer "
            "(a CPU-only torch build is enough and avoids gigabytes of CUDA libraries)")
LARQ = "needs larq and TensorFlow: pip install larq tensorflow tf-keras"


def need(why: str, *modules: str):
    return [pytest.importorskip(m, reason=why) for m in modules]


def brevitas_bnn(n: int, hidden: list[int], classes: int):
    import brevitas.nn as qnn
    import torch
    from brevitas.quant import SignedBinaryActPerTensorConst as Act
    from brevitas.quant import SignedBinaryWeightPerTensorConst as Weight
    layers = [qnn.QuantIdentity(act_quant=Act, return_quant_tensor=True)]
    for i, o in zip([n] + hidden, hidden + [classes]):
        layers += [qnn.QuantLinear(i, o, bias=False, weight_quant=Weight),
                   torch.nn.BatchNorm1d(o)]
        if o != classes:
            layers.append(qnn.QuantIdentity(act_quant=Act, return_quant_tensor=True))
    return torch.nn.Sequential(*layers)


def test_brevitas_trained_bnn_imports_to_the_same_classes(tmp_path):
    torch, _, _, _ = need(BREVITAS, "torch", "brevitas", "onnxoptimizer", "qonnx")
    from brevitas.export import export_qonnx

    from xdpnn.trainer import onnx_import, reference
    torch.manual_seed(0)
    n, classes = 48, 4
    net = brevitas_bnn(n, [24, 12], classes)
    x = torch.randint(0, 2, (1024, n)).float() * 2 - 1
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 7] > 0).long()
    opt = torch.optim.Adam(net.parameters(), 0.01)
    for _ in range(80):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(net, input_t=torch.zeros(1, n), export_path=str(tmp_path / "b.onnx"))
    graph = onnx_import.load_graph(tmp_path / "b.onnx")
    model = onnx_import.import_graph(graph)
    assert model.sizes == [n, 24, 12, classes]
    bits = np.random.default_rng(0).integers(0, 2, (5000, n), dtype=np.uint8)
    ours = reference.predict(model, bits)
    assert (ours == onnx_import.framework_classes(graph, bits)).all()
    with torch.no_grad():
        scores = net(torch.from_numpy(bits.astype(np.float32) * 2 - 1))
    # torch itself: its batch norm rounds differently from onnxruntime's,
    # which only an exact tie at a threshold could show
    assert (ours == scores.argmax(1).numpy()).all()
    assert len(np.unique(ours)) > 1


def test_larq_trained_bnn_imports_to_the_same_classes(tmp_path):
    import os
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq builds on Keras 2 (tf_keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    lq, tf = need(LARQ, "larq", "tensorflow")
    from xdpnn.loader import cli
    from xdpnn.trainer import larq_import, reference
    from xdpnn.trainer.model import load
    keras = larq_import._keras()
    tf.random.set_seed(0)
    n, classes = 40, 3
    kw = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
              kernel_constraint="weight_clip", use_bias=False)
    km = keras.Sequential([lq.layers.QuantDense(20, input_shape=(n,), **kw),
                           keras.layers.BatchNormalization(),
                           lq.layers.QuantDense(10, **kw), keras.layers.BatchNormalization(),
                           lq.layers.QuantDense(classes, **kw),
                           keras.layers.BatchNormalization()])
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0], (1024, n)).astype(np.float32)
    y = (x[:, :5].sum(1) > 0).astype(int) + (x[:, 9] > 0).astype(int)
    km.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    km.fit(x, y, epochs=5, verbose=0)
    km.save(tmp_path / "l.h5")
    assert cli.main(["import", str(tmp_path / "l.h5"), "--out", str(tmp_path / "l.npz")]) == 0
    model = load(tmp_path / "l.npz")
    assert model.sizes == [n, 20, 10, classes] and model.provenance["source"] == "larq"
    bits = rng.integers(0, 2, (5000, n), dtype=np.uint8)
    ours = reference.predict(model, bits)
    assert (ours == larq_import.keras_classes(km, bits)).all()
    assert len(np.unique(ours)) > 1
    if os.geteuid() == 0:  # the kernel too, in a process without TensorFlow (BCC's LLVM)
        from cli import xdpnn
        r = xdpnn("-j", "verify", "--model", tmp_path / "l.npz", "--graph", tmp_path / "l.h5",
                  "--samples", 10000, check=True)
        rep = __import__("json").loads(r.stdout)
        assert rep["mismatches"] == 0 and rep["against"] == "graph"
