"""Training and export: deterministic, accurate enough, and bit-exact.

The exported model's predictions must equal the trainer's binarized network
on every sample (pure Python), and the kernel's on every sample (BPF tier,
BPF_PROG_TEST_RUN on the encoded requests or frames).
"""
from __future__ import annotations

import numpy as np
import pytest

from xdpnn.loader.testrun import Runner
from xdpnn.trainer import data, export, features, reference, train
from xdpnn.trainer.model import load
from xdpnn.traffic import dataset, packets

root = pytest.mark.root
SMALL = dict(hidden=[64], epochs=25, patience=8)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def digits_model(digits):
    return train.train(digits, train.Config(**SMALL))


@pytest.fixture(scope="module")
def traffic_frames():
    return dataset.generate(per_class=60, seed=3)


@pytest.fixture(scope="module")
def traffic_model(traffic_frames):
    ds = data.frames_dataset(traffic_frames, "traffic test set")
    return train.train(ds, train.Config(hidden=[32], epochs=10, seed=3)), ds


def test_training_is_deterministic_with_a_seed(digits, digits_model):
    again = train.train(digits, train.Config(**SMALL))
    for a, b in zip(digits_model.weights + digits_model.thresholds,
                    again.weights + again.thresholds):
        assert np.array_equal(a, b)
    assert np.array_equal(digits_model.out_scale, again.out_scale)
    assert np.array_equal(digits_model.out_bias, again.out_bias)
    assert digits_model.provenance == again.provenance
    other = train.train(digits, train.Config(**{**SMALL, "seed": 1, "epochs": 2}))
    assert not np.array_equal(other.weights[0], digits_model.weights[0])


def test_digits_accuracy_floor_and_gap(digits_model):
    """A 256-64-10 BNN on digits: >= 90 % test accuracy, within 5 points of
    the full-precision MLP trained with the same code and budget."""
    acc = digits_model.provenance["report"]["accuracy"]
    assert acc["exported"] >= 0.90, acc
    assert acc["full_precision"] - acc["exported"] < 0.05, acc


def test_report_holds_what_the_issue_lists(digits_model):
    r = digits_model.provenance["report"]
    assert r["exported_equals_binarized"] is True
    assert r["accuracy"]["exported"] == r["accuracy"]["binarized"]
    assert np.array(r["confusion"]).sum() == r["samples"]["test"]
    assert np.trace(np.array(r["confusion"])) / r["samples"]["test"] == \
        pytest.approx(r["accuracy"]["exported"], abs=1e-4)
    assert r["data"] == "digits" and r["encoding"]["cuts"] == [2, 6, 10, 14]
    assert r["config"]["seed"] == 0 and r["binarized"]["epochs_run"] >= 1
    assert r["model_bytes"] == 64 * 32 + 10 * 8 + 4 * 64 + 16 * 10


def test_test_split_is_never_trained_on(digits):
    cfg = train.Config()
    rest, test_idx = data.stratified_split(digits.labels, cfg.test_fraction, cfg.seed)
    assert not set(rest) & set(test_idx) and len(rest) + len(test_idx) == len(digits.labels)
    tr, val, test = train.split(digits, cfg)
    assert np.array_equal(test.bits, digits.bits[test_idx])
    assert len(tr.labels) + len(val.labels) == len(rest)
    # Every class is on both sides, in proportion.
    for c in range(10):
        share = (test.labels == c).sum() / (digits.labels == c).sum()
        assert 0.2 < share < 0.3


def test_saved_model_round_trips(tmp_path, digits_model, digits):
    path = tmp_path / "m.npz"
    digits_model.save(path)
    back = load(path)
    test = train.labeled_test_set(back)
    assert np.array_equal(reference.predict(back, test.bits),
                          reference.predict(digits_model, test.bits))


# --- export: binarized network == exported model -------------------------------------

def _random_net(sizes, seed):
    """A binarized net with random weights and batch norm, edge cases mixed in:
    negative and zero gamma, zero variance."""
    rng = np.random.default_rng(seed)
    net = train.Net(sizes, True, rng)
    for layer in net.layers:
        n = len(layer["gamma"])
        layer["gamma"] = rng.normal(0, 1, n) * rng.choice([1, 1, -1, 0], n)
        layer["beta"] = rng.normal(0, 1, n)
        layer["mean"] = rng.normal(0, np.sqrt(layer["w"].shape[1]), n)
        layer["var"] = rng.uniform(0, 3 * layer["w"].shape[1], n) * rng.choice([1, 1, 0], n)
    return net


@pytest.mark.parametrize("sizes,seed", [([40, 17, 3], 0), ([256, 64, 32, 10], 1),
                                        ([100, 8, 8, 8, 8, 2], 2)])
def test_exported_equals_binarized_on_random_nets(sizes, seed):
    net = _random_net(sizes, seed)
    model = export.export(net.layers, train.EPS, {"mode": "payload"}, [], {})
    bits = np.random.default_rng(seed).integers(0, 2, (3000, sizes[0]), dtype=np.uint8)
    assert np.array_equal(net.predict(train.pm1(bits)), reference.predict(model, bits))


def test_exported_equals_binarized_on_a_trained_net(digits):
    tr, val, test = train.split(digits, train.Config())
    net, _ = train.fit(tr, val, [256, 32, 10], True, train.Config(epochs=3))
    model = export.export(net.layers, train.EPS, {"mode": "payload"}, digits.classes, {})
    assert np.array_equal(net.predict(train.pm1(test.bits)), reference.predict(model, test.bits))


# --- BN folding edge cases ----------------------------------------------------------

def _fold_one(gamma, beta, mean, var, n=8):
    """Folds one unit with weights all +1 over n inputs; returns, for every
    dot product a the unit can see, (trainer fires, exported model fires)."""
    w = np.ones((1, n), np.uint8)
    bits, t = export.fold_hidden(w, np.array([gamma]), np.array([beta]), np.array([mean]),
                                 np.array([var]), train.EPS)
    out = []
    for ones in range(n + 1):  # inputs with `ones` bits set: a = 2*ones - n
        x = np.zeros((1, n), np.uint8)
        x[0, :ones] = 1
        a = 2 * ones - n
        exported = reference.dot(x, bits)[0, 0] >= t[0]
        out.append((a, bool(export.bn_fires(np.float64(a), gamma, beta, mean, var,
                                            train.EPS)), bool(exported)))
    return out, bits, t


def test_fold_positive_scale():
    out, bits, t = _fold_one(2.0, 0.5, 1.0, 4.0)
    assert all(f == e for _, f, e in out)
    # Fires iff 2 * (a - 1) / 2 + 0.5 >= 0 iff a >= 0.5: the smallest integer is 1
    # (with 8 inputs a is even, so the first a that fires is 2).
    assert bits.all() and t[0] == 1
    assert [a for a, f, _ in out if f][0] == 2


def test_fold_negative_scale_flips_weights_and_comparison():
    out, bits, t = _fold_one(-1.5, 0.0, 2.0, 1.0)
    assert all(f == e for _, f, e in out)
    assert not bits.any()  # weights flipped
    assert [a for a, f, _ in out if f] == [-8, -6, -4, -2, 0, 2]  # a <= 2 <=> -a >= -2
    assert t[0] == -2


def test_fold_zero_variance_uses_eps():
    out, _, _ = _fold_one(1.0, -0.001, 3.0, 0.0)
    assert all(f == e for _, f, e in out)
    # (a - 3) / sqrt(eps) - 0.001 >= 0 only from a = 4 (a = 3 gives -0.001).
    assert [a for a, f, _ in out if f] == [4, 6, 8]


@pytest.mark.parametrize("beta,fires", [(0.0, True), (0.3, True), (-0.3, False)])
def test_fold_zero_gamma_is_a_constant(beta, fires):
    out, _, t = _fold_one(0.0, beta, 5.0, 2.0)
    assert all(f == fires and e == fires for _, f, e in out)
    assert t[0] == (-8 if fires else 9)


def test_fold_tie_exactly_at_the_threshold_fires():
    # gamma * (a - 2) / sqrt(var + eps) + 0 is exactly 0 at a = 2: sign(0) = +1.
    for gamma in (1.0, -1.0):
        out, _, _ = _fold_one(gamma, 0.0, 2.0, 1.0 - train.EPS)
        assert all(f == e for _, f, e in out)
        assert dict((a, e) for a, _, e in out)[2] is True


def test_output_quantization_within_limits_and_exact():
    rng = np.random.default_rng(5)
    scale, bias = export.quantize_output(rng.normal(0, 3, 10), rng.normal(0, 1e3, 10),
                                         rng.normal(0, 50, 10), rng.uniform(0, 100, 10),
                                         train.EPS)
    assert np.abs(scale).max() <= 2 ** 16 and np.abs(bias).max() <= 2 ** 40
    assert np.abs(scale).max() > 2 ** 15  # uses the range: small rounding error


# --- the kernel -------------------------------------------------------------------

@root
def test_kernel_equals_exported_on_every_digits_test_sample(build, digits_model):
    test = train.labeled_test_set(digits_model)
    runner = Runner(build(digits_model), 9595)
    want = reference.predict(digits_model, test.bits)
    got = [runner.run(packets.request(reference.bytes_from_bits(b), 9595)).cls
           for b in test.bits]
    assert got == want.tolist()


@root
def test_kernel_equals_reference_per_class_on_the_traffic_set(build, traffic_model,
                                                              traffic_frames):
    model, ds = traffic_model
    runner = Runner(build(model), 0)
    for c, name in enumerate(ds.classes):
        frames = traffic_frames[name]
        bits = np.stack([features.model_input(f, "headers", 256, 0)[1] for f in frames])
        want = reference.predict(model, bits)
        got = np.array([runner.run(f).cls for f in frames])
        assert np.array_equal(got, want), name
        assert (got == c).mean() == (want == c).mean()
