"""A network trained in a framework, exported, imported: same classes.

Skipped where the framework is not installed (CI does not install it):
Brevitas needs torch (README, "Models from other frameworks").
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

WHY = "needs torch, brevitas and onnxoptimizer: pip install torch brevitas onnxoptimizer"
torch = pytest.importorskip("torch", reason=WHY)
pytest.importorskip("brevitas", reason=WHY)
pytest.importorskip("onnxoptimizer", reason=WHY)
pytest.importorskip("qonnx", reason="pip install '.[onnx]'")


def brevitas_bnn(n: int, hidden: list[int], classes: int):
    import brevitas.nn as qnn
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
