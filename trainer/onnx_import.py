"""From a QONNX/ONNX graph of a binarized MLP to a model file, and back.

The graph is read as a chain: input -> [Flatten/Reshape] -> [binarizer] ->
(MatMul|Gemm -> elementwise ops -> binarizer)* -> MatMul|Gemm -> elementwise
ops -> [ArgMax].  A binarizer is BipolarQuant, Sign, or a MultiThreshold
with one threshold per channel; the elementwise ops are BatchNormalization,
Add, Sub, Mul, Div, Cast and Identity with constant operands.

Folding follows trainer/export.py: instead of solving float equations for
a threshold, the importer runs the graph's own nodes (through qonnx's
executor, which runs standard nodes with onnxruntime) on every value the
layer's integer dot product a can take, and reads off the threshold.  What
the framework computes after the MatMul is therefore reproduced exactly,
ties and all: a unit firing for a >= T gets threshold T; one firing for
a <= M gets its weight bits flipped and threshold -M; a constant unit gets
-n or n + 1.  A unit whose output is neither of the binarizer's two values
at some a (ONNX Sign(0) = 0) or that is not a step in a is refused.

A packet's input bit b stands for the graph input value 2b - 1 (+1 or -1),
which the graph's own input binarizer (or a BIPOLAR / BINARY annotation on
the input) turns into the first layer's activations.

The output layer's scores s_k(a) = alpha_k a + beta_k become the format's
integers: unchanged when they already are integers within the limits,
else scaled by a common power of two and rounded (trainer.export's
quantize_output), which keeps the argmax except for scores closer than the
rounding step (docs/import.md, "Ties").
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xdpnn.trainer.export import quantize_output
from xdpnn.trainer.model import (BIAS_RANGE, DEFAULT_PORT, SCALE_RANGE, Model, ModelError,
                                 check_layout)

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "finn")
MAX_GRAPH_BYTES = 64 << 20  # a 1024-512x4-64 graph in float32 is under 4 MB
LINEAR = ("MatMul", "Gemm")
BINARIZERS = ("BipolarQuant", "Sign", "MultiThreshold")
ELEMENTWISE = ("BatchNormalization", "Add", "Sub", "Mul", "Div", "Cast", "Identity")
RESHAPES = ("Flatten", "Reshape")
META_INPUT, META_CLASSES = "xdpnn.input", "xdpnn.classes"
# Ops that may compute constants (weights from a quantizer, a transpose...)
CONST_OPS = ("Constant", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
             "Cast", "Quant", "IntQuant", "BipolarQuant", "Mul", "Div", "Add", "Sub", "Neg",
             "Sign")
MAX_CONST_VALUES = 1024 * 512  # the largest weight array of the format
SUPPORTED = ", ".join(LINEAR + BINARIZERS + ELEMENTWISE + RESHAPES + ("ArgMax",))


class GraphError(ValueError):
    """A graph that does not map onto the model format: names the node and the reason."""


def _need_qonnx():
    try:
        import onnx  # noqa: F401
        from qonnx.core.modelwrapper import ModelWrapper  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError(
            f"onnx and qonnx are needed ({e.name} is missing): pip install '.[onnx]'") from None


# --- running the framework ---------------------------------------------------------

def run_graph(model, inputs: dict, outputs: list[str] | None = None) -> dict:
    """Executes an onnx ModelProto with qonnx's executor on concrete inputs.

    qonnx needs every shape fixed, so the inputs' shapes are written into a
    copy of the graph and the shapes inferred again.
    """
    import onnx
    from onnx import helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    try:
        import onnxruntime
        onnxruntime.set_default_logger_severity(3)  # shape merge notes on every run
    except ImportError:
        pass

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init = {i.name for i in g.initializer}
    del g.value_info[:]
    for vi in list(g.input):
        if vi.name in init:
            continue
        if vi.name not in inputs:
            raise GraphError(f"input '{vi.name}': no value given")
        arr = inputs[vi.name]
        g.input.remove(vi)
        g.input.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type,
                                                     list(arr.shape)))
    if outputs is not None:  # intermediate tensors: read from the full context
        del g.output[:]
    batch = next(iter(inputs.values())).shape[0] if inputs else 1
    for vi in list(g.output):  # the batch size of the outputs follows the inputs'
        t = vi.type.tensor_type
        dims = [d.dim_value or 1 for d in t.shape.dim]
        g.output.remove(vi)
        g.output.append(helper.make_tensor_value_info(vi.name, t.elem_type,
                                                      [batch] + dims[1:] if dims else None))
    mw = ModelWrapper(m).transform(InferShapes())
    res = execute_onnx(mw, inputs, return_full_exec_context=outputs is not None)
    return {o: res[o] for o in (outputs or [o.name for o in g.output])}


def framework_classes(model, bits: np.ndarray) -> np.ndarray:
    """The class the framework gives each row of input bits: bit b fed as
    2b - 1, or as b itself to an input annotated BINARY.

    The graph's output is either scores (argmax, first maximum) or an ArgMax.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    g = model.graph
    name = _data_input(g).name
    x = np.asarray(bits, np.float32)
    quant = _first_quant(model)
    if quant is not None:  # multi-bit inputs: the integers, times the Quant's scale
        x = x * np.float32(quant[2])
    elif ModelWrapper(model).get_tensor_datatype(name).name != "BINARY":
        x = x * 2 - 1
    x = x.reshape(len(bits), *_input_dims(g))
    out = run_graph(model, {name: x})[g.output[0].name]
    out = out.reshape(len(bits), -1)
    return out[:, 0].astype(np.int64) if out.shape[1] == 1 else np.argmax(out, axis=1)


def _first_quant(model):
    """(k, signed, scale) of a multi-bit input Quant (after any reshapes), or None."""
    gr = _Graph(model)
    node = gr.next(gr.input.name)
    while node is not None and node.op_type in RESHAPES + ("Identity",):
        node = gr.next(node.output[0])
    return _input_quant(gr, node) if node is not None and node.op_type == "Quant" else None


def _input_quant(gr, node):
    """(k, signed, scale) of a Quant on the input that the format can read:
    k-bit integers times a constant scale, the packet's bytes being the
    integers (docs/model-format.md, "Multi-bit inputs"); else None."""
    ins = [gr.const.get(i) if i else None for i in node.input[1:4]]
    if len(ins) < 3 or any(v is None or np.size(v) != 1 for v in ins):
        return None
    scale, zero, bits = (float(np.ravel(v)[0]) for v in ins)
    attrs = {a.name: a for a in node.attribute}
    signed = bool(attrs["signed"].i) if "signed" in attrs else True
    narrow = bool(attrs["narrow"].i) if "narrow" in attrs else False
    if not (scale > 0 and np.isfinite(scale) and zero == 0 and bits == int(bits)
            and 2 <= bits <= 8 and not narrow):
        return None
    return int(bits), signed, scale


def graph_inputs(model) -> int:
    """How many inputs the graph's data input has (batch dimension excluded)."""
    return int(np.prod(_input_dims(model.graph)))


def _input_dims(g) -> list[int]:
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in _data_input(g).type.tensor_type.shape.dim]
    return [d or 1 for d in dims[1:]]


def _data_input(g):
    init = {i.name for i in g.initializer}
    ins = [i for i in g.input if i.name not in init]
    if len(ins) != 1:
        raise GraphError(f"graph: expected one data input, got {len(ins)} "
                         f"({', '.join(i.name for i in ins) or 'none'})")
    return ins[0]


# --- reading the graph ---------------------------------------------------------------

def load_graph(path: str | Path):
    """The ModelProto of a file, read with a size bound and no external data."""
    _need_qonnx()
    import onnx
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise GraphError(f"{path}: no such file") from None
    if not path.is_file():
        raise GraphError(f"{path}: not a regular file")
    if st.st_size > MAX_GRAPH_BYTES:
        raise GraphError(f"{path}: {st.st_size:,} bytes, more than the {MAX_GRAPH_BYTES:,} "
                         "any graph of the format's largest model needs")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError and others
        raise GraphError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise GraphError(f"initializer '{t.name}': external data is not read")
    return model


def _label(node) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


def _as_float64(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float64) if v.dtype.kind == "f" else v


class _Graph:
    """Constants folded, consumers indexed; the chain is walked from the input."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model = model
        g = model.graph
        self.const = {t.name: _as_float64(numpy_helper.to_array(t)) for t in g.initializer}
        folded = {}  # outputs of constant nodes, in their own dtypes
        self.input = _data_input(g)
        if len(g.output) != 1:
            raise GraphError(f"graph: expected one output, got {len(g.output)}")
        self.output = g.output[0].name
        self.consumers: dict[str, list] = {}
        self.walked: set[int] = set()
        for node in g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        # Nodes whose inputs are all constants (weight quantizers, Constant
        # nodes, transposes of initializers) are evaluated once, here.
        for node in g.node:
            if node.op_type == "Constant" or (node.input and all(
                    i in self.const or i == "" for i in node.input)):
                self._check_constant_node(node)
                try:
                    vals = run_graph(_single(model, node, [], [], folded), {},
                                     list(node.output))
                except Exception as e:
                    raise GraphError(f"{_label(node)}: cannot evaluate it "
                                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                     ) from None
                for k, v in vals.items():
                    folded[k] = v
                    self.const[k] = _as_float64(v)

    def _check_constant_node(self, node) -> None:
        """Only ops whose output is no larger than their broadcast inputs, and
        inputs no larger than the largest weight array: a hostile graph cannot
        make the import allocate more than a few tens of MB."""
        if node.op_type not in CONST_OPS:
            raise GraphError(f"{_label(node)}: computes a constant with an unsupported op "
                             f"(supported: {', '.join(CONST_OPS)})")
        shapes = [np.shape(self.const[i]) for i in node.input if i]
        try:
            size = int(np.prod(np.broadcast_shapes(*shapes))) if shapes else 0
        except ValueError:
            size = max(int(np.prod(sh)) for sh in shapes)  # Reshape: a shape vector
        if size > MAX_CONST_VALUES:
            raise GraphError(f"{_label(node)}: {size:,} values, more than the "
                             f"{MAX_CONST_VALUES:,} of the format's largest weight array")

    def next(self, tensor: str):
        nodes = self.consumers.get(tensor, [])
        if len(nodes) > 1:
            raise GraphError(f"tensor '{tensor}': used by {len(nodes)} nodes "
                             f"({', '.join(n.op_type for n in nodes)}); only a chain is "
                             "supported")
        if nodes and id(nodes[0]) in self.walked:
            raise GraphError(f"{_label(nodes[0])}: the graph has a cycle")
        if nodes:
            self.walked.add(id(nodes[0]))
        return nodes[0] if nodes else None


def _single(model, node_or_nodes, inputs: list, outputs: list, folded: dict | None = None):
    """A model of some of the graph's nodes, with its opsets and constants
    (its initializers, and `folded`: constants computed from them)."""
    from onnx import helper, numpy_helper
    nodes = node_or_nodes if isinstance(node_or_nodes, list) else [node_or_nodes]
    used = {i for n in nodes for i in n.input}
    init = [t for t in model.graph.initializer if t.name in used]
    have = {t.name for t in init}
    init += [numpy_helper.from_array(v, k) for k, v in (folded or {}).items()
             if k in used and k not in have]
    g = helper.make_graph(nodes, "part", inputs, outputs, initializer=init)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def _input_values(gr: _Graph, node, n: int):
    """(lo, hi) per input: the activations that bit 0 and bit 1 become."""
    from qonnx.core.modelwrapper import ModelWrapper
    if node is not None and node.op_type in ("Quant", "IntQuant"):
        raise GraphError(f"{_label(node)}: an input quantizer that is not Quant with "
                         "scale > 0, zero point 0, bitwidth 2..8, narrow 0")
    if node is not None and node.op_type in BINARIZERS:
        _check_binarizer(gr, node)
        x = np.stack([-np.ones(n, np.float32), np.ones(n, np.float32)])
        lo, hi = _eval(gr, [node], x, node.output[0])
        if np.any(lo == hi):
            raise GraphError(f"{_label(node)}: maps input -1 and +1 to the same value")
        return lo.astype(np.float64), hi.astype(np.float64), gr.next(node.output[0])
    dt = ModelWrapper(gr.model).get_tensor_datatype(gr.input.name).name
    if dt == "BIPOLAR":
        return -np.ones(n), np.ones(n), node
    if dt == "BINARY":
        return np.zeros(n), np.ones(n), node
    raise GraphError(f"input '{gr.input.name}': {dt} values with no binarizer (BipolarQuant, "
                     "Sign or MultiThreshold) and no BIPOLAR or BINARY annotation")


def _check_binarizer(gr: _Graph, node) -> None:
    if node.op_type == "MultiThreshold":
        t = gr.const.get(node.input[1])
        if t is None:
            raise GraphError(f"{_label(node)}: thresholds are not constant")
        if t.ndim != 2 or t.shape[1] != 1:
            raise GraphError(f"{_label(node)}: {t.shape[-1]} thresholds per channel; one "
                             "(a bipolar step) is supported")
    elif node.op_type == "BipolarQuant" and node.input[1] not in gr.const:
        raise GraphError(f"{_label(node)}: scale is not constant")


def _eval(gr: _Graph, nodes: list, x: np.ndarray, out: str) -> np.ndarray:
    """The framework's output `out` of these nodes for input batch x."""
    from onnx import TensorProto, helper
    m = _single(gr.model, nodes, [helper.make_tensor_value_info(
        nodes[0].input[0], TensorProto.FLOAT, list(x.shape))],
        [])
    try:
        return run_graph(m, {nodes[0].input[0]: x.astype(np.float32)}, [out])[out]
    except GraphError:
        raise
    except Exception as e:
        raise GraphError(f"{_label(nodes[0])}: cannot evaluate it "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _weights(gr: _Graph, node, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(W as (in, out) float64, bias per out) of a MatMul or Gemm with constant weights."""
    if node.input[1] not in gr.const:
        raise GraphError(f"{_label(node)}: weights are not constant")
    w = np.asarray(gr.const[node.input[1]], np.float64)
    attrs = {a.name: a for a in node.attribute}
    bias = 0.0
    if node.op_type == "Gemm":
        if attrs.get("transA") and attrs["transA"].i:
            raise GraphError(f"{_label(node)}: transA is not supported")
        if attrs.get("transB") and attrs["transB"].i:
            w = w.T
        w = w * (attrs["alpha"].f if "alpha" in attrs else 1.0)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in gr.const:
                raise GraphError(f"{_label(node)}: bias is not constant")
            c = np.asarray(gr.const[node.input[2]], np.float64).reshape(-1)
            if w.ndim != 2 or c.size not in (1, w.shape[1]):
                raise GraphError(f"{_label(node)}: bias of {c.size} values for "
                                 f"{w.shape[-1]} units")
            bias = (attrs["beta"].f if "beta" in attrs else 1.0) * c
    if w.ndim != 2 or w.shape[0] != n:
        raise GraphError(f"{_label(node)}: weights of shape {w.shape}, expected ({n}, units)")
    return w, np.zeros(w.shape[1]) + bias


def _chain(gr: _Graph, node, units: int):
    """Elementwise nodes from `node` up to a binarizer, ArgMax or the graph end.

    Their constant operands must be per unit or scalars (shape (units,),
    (1, units) or one value): the folding runs them on a batch of dot
    products, which only means the same as the graph's own batch if every
    row gets the same operand.
    """
    nodes = []
    while node is not None and node.op_type in ELEMENTWISE:
        for i in node.input[1:]:
            if i and i not in gr.const:
                raise GraphError(f"{_label(node)}: operand '{i}' is not constant")
            shape = np.shape(gr.const[i]) if i else ()
            if i and (int(np.prod(shape)) not in (1, units) or any(d != 1 for d in shape[:-1])):
                raise GraphError(f"{_label(node)}: operand '{i}' of shape {shape}; expected "
                                 f"one value or one per unit ({units})")
        nodes.append(node)
        node = gr.next(node.output[0])
    return nodes, node


def dot_values(n: int) -> np.ndarray:
    """Every value the ±1 dot product of n inputs can take: -n, -n + 2, ..., n."""
    return np.arange(-n, n + 1, 2, dtype=np.float64)


def fold_steps(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: np.ndarray, n: int,
               where: str, zero_hint: str = "", a: np.ndarray | None = None):
    """(bits, thresholds) of a hidden layer from the framework's activations.

    y[i, j] is unit j's output at dot product a[i] (default dot_values(n);
    a multi-bit first layer: every integer -M n .. M n); lo and hi are the
    two values the framework's binarizer can output, hi meaning +1.
    """
    a = dot_values(n) if a is None else a
    units = bits.shape[0]
    thresholds = np.empty(units, np.int64)
    bits = bits.copy()
    for j in range(units):
        if lo[j] == hi[j]:
            raise GraphError(f"{where}: unit {j} has a single output value")
        odd = ~np.isin(y[:, j], [lo[j], hi[j]])
        if odd.any():
            k = int(np.argmax(odd))
            raise GraphError(f"{where}: unit {j} outputs {float(y[k, j]):g} at dot product "
                             f"{int(a[k])}, neither {lo[j]:g} nor {hi[j]:g}{zero_hint}")
        f = y[:, j] == hi[j]
        steps = np.count_nonzero(f[1:] != f[:-1])
        if not f.any():
            thresholds[j] = int(a[-1]) + 1
        elif f.all():
            thresholds[j] = int(a[0])
        elif steps != 1:
            raise GraphError(f"{where}: unit {j} is not a step in its dot product")
        elif f[-1]:
            thresholds[j] = int(a[np.argmax(f)])           # first a that fires
        else:
            bits[j] ^= 1                                    # fires for a <= last: negate a
            thresholds[j] = -int(a[len(f) - 1 - np.argmax(f[::-1])])
    return bits, thresholds


def fold_scores(y: np.ndarray, n: int, where: str):
    """(out_scale, out_bias, exact) from the framework's scores y[i, k] at
    dot product dot_values(n)[i] of class k."""
    a = dot_values(n)
    classes = y.shape[1]
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        k = int(np.flatnonzero(~np.isfinite(y).all(axis=0))[0])
        raise GraphError(f"{where}: score of class {k} is not finite (a zero variance with "
                         "epsilon 0?)")
    if len(a) == 1:
        alpha, beta = np.zeros(classes), y[0]
    else:
        alpha = (y[-1] - y[0]) / (a[-1] - a[0])
        beta = y[0] - alpha * a[0]
    resid = np.abs(alpha[None, :] * a[:, None] + beta[None, :] - y)
    scale = np.maximum(np.abs(y).max(axis=0), 1e-30)
    bad = np.flatnonzero((resid > 1e-5 * scale).any(axis=0))
    if bad.size:
        raise GraphError(f"{where}: score of class {int(bad[0])} is not affine in its dot "
                         "product")
    for k in range(41):  # dyadic scores (Mul 0.5, float32 values): exact integers
        sa, sb = alpha * 2.0**k, beta * 2.0**k
        if np.abs(sa).max() > SCALE_RANGE[1] or np.abs(sb).max() > BIAS_RANGE[1]:
            break
        if np.all(sa == np.rint(sa)) and np.all(sb == np.rint(sb)):
            return sa.astype(np.int64), sb.astype(np.int64), True
    s, b = quantize_output(alpha, beta, np.zeros(classes), np.ones(classes), 0.0)
    return s, b, False


def binary_rows(w: np.ndarray, lo: np.ndarray, hi: np.ndarray, where: str):
    """Weight bits (out, in), scale c and offset d per unit, x.W = c*a + d,
    for inputs that are lo or hi (bit 0 or 1) and weights w (in, out)."""
    s, o = (hi - lo) / 2, (hi + lo) / 2
    e = s[:, None] * w                      # the weight each ±1 input meets
    mag = np.abs(e)
    c = mag.max(axis=0)
    bad = np.flatnonzero((mag != c).any(axis=0) | (c == 0))
    if bad.size:
        j = int(bad[0])
        vals = sorted({float(v) for v in w[:, j]})
        raise GraphError(f"{where}: non-binary weights for unit {j}: values "
                         f"{vals[:4]}{'...' if len(vals) > 4 else ''} (expected ±c per unit)")
    return (e > 0).T.astype(np.uint8), c, o @ w


def _pre_activations(c, d, n, a=None) -> np.ndarray:
    """What the MatMul outputs at every dot product: (values, units) float32."""
    a = dot_values(n) if a is None else a
    return (c[None, :] * a[:, None] + d[None, :]).astype(np.float32)


def _fold_hidden(gr, nodes, binarizer, bits, c, d, n, a=None):
    """Thresholds of one hidden layer, from the framework's own output at every a."""
    _check_binarizer(gr, binarizer)
    units = bits.shape[0]
    out = binarizer.output[0]
    y = _eval(gr, nodes + [binarizer], _pre_activations(c, d, n, a), out).reshape(-1, units)
    ends = _eval(gr, [binarizer], np.stack([np.full(units, -3e38, np.float32),
                                            np.full(units, 3e38, np.float32)]),
                 out).reshape(2, units)
    lo, hi = ends.min(axis=0).astype(np.float64), ends.max(axis=0).astype(np.float64)
    bits, thresholds = fold_steps(y, lo, hi, bits, n, _label(binarizer),
                                  " (ONNX Sign(0) is 0: use BipolarQuant)", a)
    return bits, thresholds, lo, hi


def _fold_output(gr, nodes, bits, c, d, n, last):
    """(out_scale, out_bias): the scores the framework computes, as integers."""
    pre = _pre_activations(c, d, n)
    y = _eval(gr, nodes, pre, nodes[-1].output[0]).reshape(len(pre), -1) if nodes else pre
    return fold_scores(y, n, _label(nodes[-1]) if nodes else _label(last))


def import_graph(model, input_mode: str | None = None, classes: list[str] | None = None,
                 port: int | None = None, source: str = "") -> Model:
    """The model file of a graph; GraphError names the node that does not fit."""
    gr = _Graph(model)
    meta = {p.key: p.value for p in model.metadata_props}
    input_ = input_section(meta, input_mode, port)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in gr.input.type.tensor_type.shape.dim]
    node = gr.next(gr.input.name)
    while node is not None and node.op_type in RESHAPES + ("Identity",):
        node = gr.next(node.output[0])
    n = int(np.prod([d for d in dims[1:] if d])) if len(dims) > 1 else (dims[0] or 0)
    if not n:
        raise GraphError(f"input '{gr.input.name}': its size is not fixed ({dims})")
    first_a = None  # the first layer's dot products, when not dot_values(n)
    quant = _input_quant(gr, node) if node is not None and node.op_type == "Quant" else None
    if quant is not None:
        # k-bit integers q times the scale s: x.W = s c a with a = q . sign(W)
        k, signed, scale = quant
        input_.update(bits=k, signed=signed)
        try:  # the input count's limit, before folding over (2 M n + 1) values
            check_layout([n, 1, 2], input_)
        except ModelError as e:
            raise GraphError(f"{_label(node)}: {e}") from None
        m = 2 ** (k - 1) if signed else 2 ** k - 1
        first_a = np.arange(-m * n, m * n + 1, dtype=np.float64)
        lo, hi, node = -np.full(n, scale), np.full(n, scale), gr.next(node.output[0])
    else:
        lo, hi, node = _input_values(gr, node, n)

    weights, thresholds = [], []
    sizes = [n]
    while True:
        if node is None or node.op_type not in LINEAR:
            what = "the graph's end" if node is None else _label(node)
            raise GraphError(f"{what}: expected MatMul or Gemm after layer {len(weights)}" +
                             (f"; unsupported op (supported: {SUPPORTED})"
                              if node is not None and node.op_type not in BINARIZERS else ""))
        linear = node
        w, bias = _weights(gr, linear, sizes[-1])
        bits, c, d = binary_rows(w, lo, hi, _label(linear))
        d = d + bias
        units = w.shape[1]
        chain, node = _chain(gr, gr.next(linear.output[0]), units)
        if node is not None and node.op_type in BINARIZERS:
            check_limits(sizes + [units, 2], input_["mode"], _label(linear), len(weights))
            bits, t, lo, hi = _fold_hidden(gr, chain, node, bits, c, d, sizes[-1],
                                           first_a if not weights else None)
            weights.append(bits)
            thresholds.append(t)
            sizes.append(units)
            node = gr.next(node.output[0])
            continue
        if node is not None and node.op_type == "ArgMax":
            attrs = {x.name: x.i for x in node.attribute}
            if attrs.get("select_last_index", 0) or attrs.get("axis", 0) not in (1, -1):
                raise GraphError(f"{_label(node)}: only ArgMax over the last axis, first "
                                 "maximum, is supported")
            if gr.next(node.output[0]) is not None:
                raise GraphError(f"{_label(gr.next(node.output[0]))}: nodes after ArgMax")
        elif node is not None:
            raise GraphError(f"{_label(node)}: unsupported op (supported: {SUPPORTED})")
        check_limits(sizes + [units], input_["mode"], _label(linear), len(weights))
        out_scale, out_bias, ints = _fold_output(gr, chain, bits, c, d, sizes[-1], linear)
        weights.append(bits)
        sizes.append(units)
        break
    if len(sizes) < 3:
        raise GraphError(f"{_label(linear)}: a single layer; the format needs 1 to 4 hidden "
                         "layers")
    names = classes or _meta_json(meta, META_CLASSES, list) or []
    try:
        check_layout(sizes, input_)
        return Model(sizes=sizes, weights=weights, thresholds=thresholds,
                     out_scale=out_scale, out_bias=out_bias, input=input_, classes=list(names),
                     provenance={"source": "onnx", "file": source,
                                 "producer": model.producer_name or "",
                                 "output": "integers" if ints else "scaled and rounded"}).validate()
    except ModelError as e:
        raise GraphError(f"graph: {e}") from None


def check_limits(sizes: list[int], mode: str, where: str, layer: int) -> None:
    """Layer `layer` (made by `where`) within the format's limits, checked before folding."""
    try:
        check_layout(sizes, {"mode": mode})
    except ModelError as e:
        raise GraphError(f"{where}: layer {layer} beyond the format's limits: {e}") from None


def _meta_json(meta: dict, key: str, kind):
    try:
        v = json.loads(meta[key]) if key in meta else None
    except ValueError:
        return None
    return v if isinstance(v, kind) else None


def input_section(meta: dict, mode: str | None, port: int | None) -> dict:
    saved = _meta_json(meta, META_INPUT, dict) or {}
    mode = mode or saved.get("mode") or "payload"
    if mode == "headers":
        return {"mode": "headers"}
    p = port or saved.get("port") or DEFAULT_PORT
    return {"mode": "payload", "port": p}


def import_file(path: str | Path, out: str | Path, input_mode: str | None = None,
                classes: list[str] | None = None, port: int | None = None) -> Model:
    """Reads a graph, writes its model file; on any error no file is left at out."""
    model = import_graph(load_graph(path), input_mode, classes, port, source=Path(path).name)
    save_atomic(out, model.save)
    return model


def save_atomic(out: str | Path, save) -> None:
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# --- the other way: a model file as a QONNX graph ----------------------------------

def export_graph(model: Model):
    """A QONNX graph computing the model's scores (float64) for inputs ±1.

    input -> BipolarQuant -> (MatMul ±1 -> MultiThreshold a >= T, bipolar)* ->
    MatMul ±1 -> Cast(double) -> Mul out_scale -> Add out_bias.  Every value
    is exact: dot products are integers below 2^11 in float32, scores below
    2^41 in float64.  FINN's flow reads this form (a streamlined BNN).

    A model with k-bit inputs starts with Quant (scale 1, zero point 0,
    bitwidth k, signed or not, not narrow) instead, for inputs that are the
    k-bit integers themselves; its first dot products are integers below
    2^15 in magnitude, still exact in float32.
    """
    _need_qonnx()
    from onnx import TensorProto, helper, numpy_helper
    q = "qonnx.custom_op.general"
    n = model.sizes[0]
    k = model.input_bits
    inits = [numpy_helper.from_array(np.float32(1.0), "one")]
    if k == 1:
        nodes = [helper.make_node("BipolarQuant", ["input", "one"], ["x0"], domain=q,
                                  name="binarize_input")]
    else:
        nodes = [helper.make_node("Quant", ["input", "one", "zero", "bitwidth"], ["x0"],
                                  domain=q, name="quantize_input",
                                  signed=int(model.input_signed), narrow=0,
                                  rounding_mode="ROUND")]
        inits += [numpy_helper.from_array(np.float32(0.0), "zero"),
                  numpy_helper.from_array(np.float32(k), "bitwidth")]
    x = "x0"
    for l, w in enumerate(model.weights):
        wname = f"w{l}"
        inits.append(numpy_helper.from_array((w.T.astype(np.float32) * 2 - 1), wname))
        nodes.append(helper.make_node("MatMul", [x, wname], [f"a{l}"], name=f"matmul{l}"))
        if l < len(model.thresholds):
            # a's range: ±n, or ±(largest |value|) n for k-bit inputs
            fan_in = w.shape[1] * (1 if l or k == 1 else 2 ** k)
            t = np.clip(model.thresholds[l], -fan_in, fan_in + 1).astype(np.float32)[:, None]
            inits.append(numpy_helper.from_array(t, f"t{l}"))
            nodes.append(helper.make_node("MultiThreshold", [f"a{l}", f"t{l}"], [f"x{l + 1}"],
                                          domain=q, name=f"threshold{l}", out_dtype="BIPOLAR",
                                          out_scale=2.0, out_bias=-1.0))
            x = f"x{l + 1}"
    last = f"a{len(model.weights) - 1}"
    inits += [numpy_helper.from_array(model.out_scale.astype(np.float64), "out_scale"),
              numpy_helper.from_array(model.out_bias.astype(np.float64), "out_bias")]
    nodes += [helper.make_node("Cast", [last], ["a_double"], to=TensorProto.DOUBLE, name="cast"),
              helper.make_node("Mul", ["a_double", "out_scale"], ["scaled"], name="out_scale"),
              helper.make_node("Add", ["scaled", "out_bias"], ["scores"], name="out_bias")]
    g = helper.make_graph(nodes, "xdpnn", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, n])], [helper.make_tensor_value_info(
            "scores", TensorProto.DOUBLE, [1, model.sizes[-1]])], initializer=inits)
    m = helper.make_model(g, producer_name="xdpnn", opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid(q, 1)])
    helper.set_model_props(m, {META_INPUT: json.dumps(model.input),
                               META_CLASSES: json.dumps(model.classes)})
    return m


def export_file(model: Model, out: str | Path) -> None:
    m = export_graph(model)
    save_atomic(out, lambda p: Path(p).write_bytes(m.SerializeToString()))
