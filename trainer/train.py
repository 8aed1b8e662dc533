"""BinaryNet training in numpy, and the full-precision MLP it is compared with.

The network: inputs as ±1, then per layer a matrix product, batch norm and
(hidden layers) an activation.  In the binarized network the weights used
in the product are sign(latent weights) and the activation is sign(y), both
with sign(0) = +1; the backward pass uses the straight-through estimator
(the gradient of sign is taken as 1 where |y| <= 1, 0 elsewhere, and the
weight gradient goes to the latent weights, which are clipped to [-1, 1]
after each Adam step).  The full-precision network runs the same code with
real weights and hard-tanh activations, so the two differ only in the
binarization.

Evaluation uses batch-norm statistics of the whole training split,
recomputed after every epoch.  The binarized network's evaluation is the
integer computation of the exported model: hidden units fire by
trainer.export.bn_fires, and classes are scored with the quantized output
affine (trainer.export.quantize_output).  Early stopping keeps the epoch
with the best validation accuracy.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from xdpnn.trainer import export, reference
from xdpnn.trainer.data import Dataset, load, stratified_split, subset
from xdpnn.trainer.model import Model, random_model

EPS = 1e-5  # batch norm: keeps a zero-variance unit finite


@dataclass
class Config:
    hidden: list[int] = field(default_factory=lambda: [128])
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.01
    lr_decay: float = 0.96      # per epoch
    patience: int = 12          # epochs without a better validation accuracy
    seed: int = 0               # the split, the initialization and the batch order
    test_fraction: float = 0.25
    val_fraction: float = 0.15  # of what is left after the test split


class Net:
    """Layers of latent weights and batch norm, binarized or full precision."""

    def __init__(self, sizes: list[int], binary: bool, rng: np.random.Generator):
        self.binary = binary
        self.layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            limit = np.sqrt(6.0 / (n_in + n_out))  # Glorot uniform
            self.layers.append({"w": rng.uniform(-limit, limit, (n_out, n_in)),
                                "gamma": np.ones(n_out), "beta": np.zeros(n_out),
                                "mean": np.zeros(n_out), "var": np.ones(n_out)})
        self.params = [(layer, k) for layer in self.layers for k in ("w", "gamma", "beta")]
        self.adam = [(np.zeros_like(layer[k]), np.zeros_like(layer[k])) for layer, k in self.params]
        self.steps = 0

    def product_weights(self, layer: dict) -> np.ndarray:
        return np.where(layer["w"] >= 0, 1.0, -1.0) if self.binary else layer["w"]

    def activation(self, y: np.ndarray) -> np.ndarray:
        return np.where(y >= 0, 1.0, -1.0) if self.binary else np.clip(y, -1.0, 1.0)

    # --- training ---

    def forward_train(self, x: np.ndarray):
        """Output (logits) and what the backward pass needs; batch statistics."""
        h, cache = x, []
        for i, layer in enumerate(self.layers):
            wq = self.product_weights(layer)
            z = h @ wq.T
            inv = 1.0 / np.sqrt(z.var(axis=0) + EPS)
            zhat = (z - z.mean(axis=0)) * inv
            y = layer["gamma"] * zhat + layer["beta"]
            cache.append((h, wq, zhat, inv, y))
            if i < len(self.layers) - 1:
                h = self.activation(y)
        return y, cache

    def backward(self, dy: np.ndarray, cache) -> list[np.ndarray]:
        grads = [None] * len(self.params)
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            h, wq, zhat, inv, y = cache[i]
            n = len(dy)
            grads[3 * i + 1] = (dy * zhat).sum(axis=0)
            grads[3 * i + 2] = dy.sum(axis=0)
            dzhat = dy * layer["gamma"]
            dz = inv / n * (n * dzhat - dzhat.sum(axis=0) - zhat * (dzhat * zhat).sum(axis=0))
            grads[3 * i] = dz.T @ h
            if i:
                # Straight-through (binary) or hard-tanh (full precision): the
                # gradient passes where the previous layer's |y| <= 1.
                dy = (dz @ wq) * (np.abs(cache[i - 1][4]) <= 1)
        return grads

    def step(self, grads: list[np.ndarray], lr: float) -> None:
        """Adam; then latent weights of a binarized net are clipped to [-1, 1]
        (past that, a weight's sign could not flip back in reasonable time)."""
        self.steps += 1
        b1, b2 = 0.9, 0.999
        for (layer, k), g, (m, v) in zip(self.params, grads, self.adam):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            mhat = m / (1 - b1 ** self.steps)
            vhat = v / (1 - b2 ** self.steps)
            layer[k] -= lr * mhat / (np.sqrt(vhat) + 1e-8)
            if k == "w" and self.binary:
                np.clip(layer[k], -1.0, 1.0, out=layer[k])

    # --- evaluation ---

    def set_population_stats(self, x: np.ndarray) -> None:
        """Batch-norm mean and variance of every layer over x (the training
        split), layer by layer through the evaluation-mode network."""
        h = x
        for i, layer in enumerate(self.layers):
            z = h @ self.product_weights(layer).T
            layer["mean"], layer["var"] = z.mean(axis=0), z.var(axis=0)
            if i < len(self.layers) - 1:
                h = self._hidden_eval(layer, z)

    def _hidden_eval(self, layer: dict, z: np.ndarray) -> np.ndarray:
        if self.binary:
            return np.where(export.bn_fires(z, layer["gamma"], layer["beta"], layer["mean"],
                                            layer["var"], EPS), 1.0, -1.0)
        y = layer["gamma"] * ((z - layer["mean"]) / np.sqrt(layer["var"] + EPS)) + layer["beta"]
        return self.activation(y)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Classes in evaluation mode; for a binarized net, the exported model's
        integer computation (see trainer/export.py)."""
        h = x
        for layer in self.layers[:-1]:
            h = self._hidden_eval(layer, h @ self.product_weights(layer).T)
        last = self.layers[-1]
        z = h @ self.product_weights(last).T
        if self.binary:
            scale, bias = export.quantize_output(last["gamma"], last["beta"], last["mean"],
                                                 last["var"], EPS)
            return np.argmax(export.integer_scores(np.rint(z), scale, bias), axis=1)
        y = last["gamma"] * ((z - last["mean"]) / np.sqrt(last["var"] + EPS)) + last["beta"]
        return np.argmax(y, axis=1)

    def snapshot(self) -> list[dict]:
        return [{k: v.copy() for k, v in layer.items()} for layer in self.layers]


def pm1(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.float64) * 2 - 1


def net_input(ds: Dataset) -> np.ndarray:
    """What the network multiplies: ±1 for bits, the integers themselves for
    multi-bit values (batch norm after the first layer absorbs their scale)."""
    if ds.encoding.get("kind") == "values":
        return ds.bits.astype(np.float64)
    return pm1(ds.bits)


def input_section(ds: Dataset) -> dict:
    """The model's input.bits and input.signed for this data's encoding."""
    if ds.encoding.get("kind") == "values":
        return {"bits": ds.encoding["bits"], "signed": ds.encoding["signed"]}
    return {}


def fit(train: Dataset, val: Dataset, sizes: list[int], binary: bool, cfg: Config,
        progress=None) -> tuple[Net, dict]:
    """Trains one network; returns it at its best validation epoch, and a log."""
    rng = np.random.default_rng(cfg.seed)
    net = Net(sizes, binary, rng)
    x, y = net_input(train), train.labels
    xv = net_input(val)
    best = (-1.0, 0, net.snapshot())
    epochs_run = 0
    for epoch in range(1, cfg.epochs + 1):
        epochs_run = epoch
        lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples for a variance
                continue
            logits, cache = net.forward_train(x[idx])
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            losses.append(-np.log(p[np.arange(len(idx)), y[idx]] + 1e-12).mean())
            p[np.arange(len(idx)), y[idx]] -= 1
            net.step(net.backward(p / len(idx), cache), lr)
        net.set_population_stats(x)
        val_acc = float((net.predict(xv) == val.labels).mean())
        if progress:
            progress(f"  {'binarized' if binary else 'full-precision'} epoch {epoch:3d}  "
                     f"loss {np.mean(losses):.4f}  validation accuracy {val_acc:.4f}")
        if val_acc > best[0]:
            best = (val_acc, epoch, net.snapshot())
        elif epoch - best[1] >= cfg.patience:
            if progress:
                progress(f"  early stop: no better validation accuracy for {cfg.patience} "
                         f"epochs; keeping epoch {best[1]}")
            break
    net.layers = best[2]
    return net, {"best_epoch": best[1], "epochs_run": epochs_run,
                 "val_accuracy": round(best[0], 4)}


def split(ds: Dataset, cfg: Config) -> tuple[Dataset, Dataset, Dataset]:
    """(train, validation, test), stratified and seeded; a source's own test
    set (MNIST) is used as is."""
    if ds.test is not None:
        rest, test = ds, ds.test
    else:
        rest_idx, test_idx = stratified_split(ds.labels, cfg.test_fraction, cfg.seed)
        rest, test = subset(ds, rest_idx), subset(ds, test_idx)
    train_idx, val_idx = stratified_split(rest.labels, cfg.val_fraction, cfg.seed + 1)
    return subset(rest, train_idx), subset(rest, val_idx), test


def confusion(labels: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def model_bytes(model: Model) -> int:
    """Bytes of parameters: weight bits, 4-byte thresholds, 8-byte scales and biases."""
    return (sum((w.shape[1] + 7) // 8 * w.shape[0] for w in model.weights)
            + 4 * sum(len(t) for t in model.thresholds) + 16 * model.sizes[-1])


def train(ds: Dataset, cfg: Config, port: int | None = None, progress=None) -> Model:
    """Trains the binarized network and the full-precision one on the same
    split with the same budget; returns the exported model, whose provenance
    holds the report."""
    started = time.monotonic()
    sizes = [ds.bits.shape[1], *cfg.hidden, len(ds.classes)]
    # the format's limits, checked before any training
    random_model(sizes, mode=ds.mode, input_bits=input_section(ds).get("bits", 1),
                 signed=input_section(ds).get("signed", False))
    train_set, val, test = split(ds, cfg)
    if progress:
        progress(f"data {ds.source}: {len(train_set.labels)} training, {len(val.labels)} "
                 f"validation, {len(test.labels)} test samples, {sizes[0]} inputs, "
                 f"{len(ds.classes)} classes")
    bnn, bnn_log = fit(train_set, val, sizes, True, cfg, progress)
    fp, fp_log = fit(train_set, val, sizes, False, cfg, progress)
    xt = net_input(test)
    binarized_pred = bnn.predict(xt)
    input_ = {"mode": ds.mode}
    if ds.mode == "payload":
        input_["port"] = port or 9595
    input_.update(input_section(ds))
    report = {
        "data": ds.source, "encoding": ds.encoding, "classes": ds.classes,
        "config": asdict(cfg), "shape": "-".join(map(str, sizes)),
        "samples": {"train": len(train_set.labels), "validation": len(val.labels),
                    "test": len(test.labels)},
        "binarized": bnn_log, "full_precision": fp_log,
        "accuracy": {"full_precision": _acc(fp.predict(xt), test.labels),
                     "binarized": _acc(binarized_pred, test.labels)},
    }
    model = export.export(bnn.layers, EPS, input_, ds.classes,
                          {"source": "xdpnn train", "report": report})
    exported_pred = reference.predict(model, test.bits)
    report["accuracy"]["exported"] = _acc(exported_pred, test.labels)
    report["exported_equals_binarized"] = bool((exported_pred == binarized_pred).all())
    report["confusion"] = confusion(test.labels, exported_pred, len(ds.classes)).tolist()
    report["model_bytes"] = model_bytes(model)
    if progress:
        progress(f"trained in {time.monotonic() - started:.1f} s")
    return model


def labeled_test_set(model: Model) -> Dataset:
    """The test split a trained model was evaluated on, rebuilt from its
    provenance (data source, encoding, seed): the samples it never saw."""
    report = model.provenance.get("report") if isinstance(model.provenance, dict) else None
    if not report or "config" not in report:
        raise ValueError("no training report in its provenance (not made by `xdpnn train`)")
    cfg = Config(**report["config"])
    encoding = report["encoding"]
    values = encoding.get("kind") == "values"
    levels = (len(encoding["cuts"]) if report["data"] == "digits" and not values
              else encoding.get("levels"))
    ds = load(report["data"], levels=levels, label_column=encoding.get("label_column"),
              split_seed=cfg.seed, test_fraction=cfg.test_fraction,
              input_bits=encoding.get("bits", 1) if values else 1,
              signed=bool(encoding.get("signed")) if values else False)
    return split(ds, cfg)[2]


def _acc(pred: np.ndarray, labels: np.ndarray) -> float:
    return round(float((pred == labels).mean()), 4)


def format_report(report: dict) -> str:
    """The report as the terminal shows it."""
    acc = report["accuracy"]
    agree = "equal to the binarized network on every sample" \
        if report["exported_equals_binarized"] else "DIFFERS from the binarized network"
    lines = [f"model {report['shape']} from {report['data']} "
             f"({report['samples']['test']} test samples, seed {report['config']['seed']})",
             f"  full-precision MLP accuracy  {acc['full_precision']:.4f}",
             f"  binarized network accuracy   {acc['binarized']:.4f}",
             f"  exported model accuracy      {acc['exported']:.4f} ({agree})",
             f"  epochs: binarized best {report['binarized']['best_epoch']} of "
             f"{report['binarized']['epochs_run']}, full precision best "
             f"{report['full_precision']['best_epoch']} of "
             f"{report['full_precision']['epochs_run']}",
             f"  model size {report['model_bytes']} bytes", "  confusion (rows: true, columns: "
             "predicted):"]
    names = report["classes"]
    width = max(5, max(len(n) for n in names) + 1)
    lines.append("    " + " " * width + "".join(f"{n[:width - 1]:>{width}}" for n in names))
    for name, row in zip(names, report["confusion"]):
        lines.append(f"    {name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
