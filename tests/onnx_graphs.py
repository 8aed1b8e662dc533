"""Binarized MLPs built with onnx's helper API, as FINN/Brevitas and plain
ONNX users write them: the fixtures of tests/test_import.py."""
from __future__ import annotations

import numpy as np
from onnx import StringStringEntryProto, TensorAnnotation, TensorProto, helper, numpy_helper

Q = "qonnx.custom_op.general"


class Builder:
    def __init__(self, n: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.n = n

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op, inputs, domain="", **attrs) -> str:
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{self.k}",
                                           domain=domain, **attrs))
        return out

    def signs(self, shape) -> np.ndarray:
        return self.rng.choice([-1.0, 1.0], shape).astype(np.float32)

    def batchnorm(self, x: str, units: int, fan_in: int, eps: float | None = None) -> str:
        """Random batch norm with the edge cases: negative and zero gamma, zero
        variance, and means on reachable dot products (ties)."""
        r = self.rng
        if eps is not None:  # the output layer: scores of one magnitude, some ties
            gamma = r.choice([1.0, 1.0, 0.75, -1.0], units)
            mean = r.integers(-2, 3, units).astype(np.float64)
            return self.node("BatchNormalization", [
                x, self.const(gamma), self.const(r.choice([0.0, 0.0, 0.5], units)),
                self.const(mean), self.const(r.choice([1.0, 0.25], units) - eps)],
                epsilon=eps)
        gamma = r.normal(0, 1, units) * r.choice([1, 1, 1, 0], units)
        gamma[: units // 4] = -np.abs(gamma[: units // 4])
        var = r.uniform(0.1, 4, units) * r.choice([1, 1, 1, 0], units)
        mean = r.integers(-fan_in // 3, fan_in // 3 + 1, units).astype(np.float64)
        beta = r.normal(0, 0.5, units) * r.choice([1, 0], units)
        eps = float(r.choice([1e-4, 0.0]))  # 0 with a zero variance: an infinite ratio
        return self.node("BatchNormalization", [x, self.const(gamma), self.const(beta),
                                                self.const(mean), self.const(var)], epsilon=eps)

    def model(self, x_in: str, out: str, n_out: int, annotate: str | None = None,
              out_type=TensorProto.FLOAT):
        g = helper.make_graph(self.nodes, "bnn",
                              [helper.make_tensor_value_info(x_in, TensorProto.FLOAT, [1, self.n])],
                              [helper.make_tensor_value_info(out, out_type, [1, n_out])],
                              initializer=self.inits)
        if annotate:
            ann = TensorAnnotation(tensor_name=x_in, quant_parameter_tensor_names=[
                StringStringEntryProto(key="finn_datatype", value=annotate)])
            g.quantization_annotation.append(ann)
        m = helper.make_model(g, producer_name="test", opset_imports=[
            helper.make_opsetid("", 13), helper.make_opsetid(Q, 1)])
        return m


def brevitas_style(sizes: list[int], seed: int, scale: float = 0.5):
    """BipolarQuant on the input, on the weights (a per-tensor scale) and on
    activations; batch norm after every MatMul, also at the output."""
    b = Builder(sizes[0], seed)
    x = b.node("BipolarQuant", ["input", b.const(1.0)], domain=Q)
    for l, (i, o) in enumerate(zip(sizes, sizes[1:])):
        w = b.node("BipolarQuant", [b.const(b.rng.normal(0, 1, (i, o))), b.const(scale)],
                   domain=Q)
        output = l == len(sizes) - 2  # scores must stay finite: epsilon > 0
        x = b.batchnorm(b.node("MatMul", [x, w]), o, i, 1e-4 if output else None)
        if l < len(sizes) - 2:
            x = b.node("BipolarQuant", [x, b.const(2.0)], domain=Q)
    return b.model("input", x, sizes[-1])


def finn_streamlined(sizes: list[int], seed: int, activation: str = "BIPOLAR",
                     inputs: str = "BIPOLAR"):
    """Inputs annotated BIPOLAR, ±1 weight initializers, one MultiThreshold per
    layer (thresholds on reachable dot products: ties), Mul and Add at the
    output and an ArgMax, the form FINN's streamlining leaves."""
    b = Builder(sizes[0], seed)
    x = "input"
    for l, (i, o) in enumerate(zip(sizes, sizes[1:])):
        x = b.node("MatMul", [x, b.const(b.signs((i, o)))])
        if l < len(sizes) - 2:
            t = b.rng.integers(-i // 4, i // 4 + 2, (o, 1)).astype(np.float32)
            attrs = (dict(out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0)
                     if activation == "BIPOLAR" else dict(out_dtype="BINARY"))
            x = b.node("MultiThreshold", [x, b.const(t)], domain=Q, **attrs)
    x = b.node("Mul", [x, b.const(b.rng.choice([1.0, 2.0, -1.0, 0.5], sizes[-1]))])
    x = b.node("Add", [x, b.const(b.rng.integers(-3, 4, sizes[-1]).astype(np.float32))])
    x = b.node("ArgMax", [x], axis=-1, keepdims=1)
    return b.model("input", x, 1, annotate=inputs, out_type=TensorProto.INT64)


def plain_onnx(sizes: list[int], seed: int):
    """Standard ONNX only (onnxruntime runs it): Sign on the input, Gemm with
    transB and a bias, batch norm and Sign; odd fan-ins keep Sign's input off 0."""
    b = Builder(sizes[0], seed)
    x = b.node("Sign", ["input"])
    for l, (i, o) in enumerate(zip(sizes, sizes[1:])):
        x = b.node("Gemm", [x, b.const(b.signs((o, i))),
                            b.const(b.rng.integers(-2, 3, o).astype(np.float32) * 2)], transB=1)
        if l < len(sizes) - 2:
            x = b.node("Sign", [b.node("Mul", [x, b.const(b.rng.choice([1.0, -1.0], o))])])
    return b.model("input", x, sizes[-1])
