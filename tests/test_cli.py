"""The `xdpnn` command line as a subprocess: exit codes (loader/errors.py),
one-line errors naming the step and the object, and --json output."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cli import xdpnn
from xdpnn.loader import datapath
from xdpnn.loader.testrun import MAX_FRAME
from xdpnn.trainer.model import load, random_model
from xdpnn.traffic import packets

root = pytest.mark.root


def assert_error(r, code, *names):
    """Exit code `code`, nothing on stdout, one stderr line naming each of names."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpnn: "), r.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=4).save(path)
    return path


# --- no root ----------------------------------------------------------------

def test_model_random_then_show(tmp_path):
    path = tmp_path / "r.npz"
    r = xdpnn("model", "random", "100-7-3", "--out", path, "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {path}: random 100-7-3 (payload), seed 4"
    m, want = load(path), random_model([100, 7, 3], seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(m.weights, want.weights))

    r = xdpnn("model", "show", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == [
        f"{path}: 100-7-3, payload input (port 9595)",
        "  classes: class0, class1, class2",
        "  model map value: 240 bytes",
    ]

    r = xdpnn("-j", "model", "show", path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["shape"], info["layers"], info["weight_bytes"]) == ("100-7-3", [100, 7, 3], 240)
    assert info["provenance"] == {"source": "random", "seed": 4}


def test_model_random_headers_mode(tmp_path):
    path = tmp_path / "h.npz"
    assert xdpnn("model", "random", "256-32-4", "--input", "headers", "--out", path
                 ).returncode == 0
    r = xdpnn("model", "show", path)
    assert r.returncode == 0 and r.stdout.startswith(f"{path}: 256-32-4, headers input\n")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,detail", [
    (lambda d: d / "missing.npz", "no such file"),
    (lambda d: _write(d / "text.npz", b"not a model\n"), "not an xdpnn model file"),
    (lambda d: _write(d / "cut.npz", (d / "m.npz").read_bytes()[:300]),
     "not an xdpnn model file"),
    (lambda d: d, "not an xdpnn model file"),
], ids=["nonexistent", "not a zip", "truncated", "a directory"])
def test_bad_model_file_exits_3(tmp_path, model_file, make, detail):
    path = make(tmp_path)
    assert_error(xdpnn("model", "show", path), 3, "load model", path, detail)


def test_invalid_model_field_exits_3(tmp_path, model_file):
    with np.load(model_file) as z:
        arrays = dict(z)
    header = json.loads(arrays["header"].tobytes())
    header["classes"] = ["a", "b", "a"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path = tmp_path / "dup.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert_error(xdpnn("model", "show", path), 3, "load model", path, "field 'classes'")


@pytest.mark.parametrize("shape,code,names", [
    ("100-0-3", 3, ["shape 100-0-3", "field 'layers[1] (hidden)'"]),
    ("2000-7-3", 3, ["shape 2000-7-3", "field 'layers[0] (inputs)'"]),
    ("100", 3, ["shape 100", "field 'layers'"]),
    ("100-x-3", 2, ["shape 100-x-3: expected sizes joined by '-'"]),
])
def test_model_random_bad_shape(tmp_path, shape, code, names):
    assert_error(xdpnn("model", "random", shape, "--out", tmp_path / "x.npz"), code, *names)
    assert not (tmp_path / "x.npz").exists()


def test_json_error_is_an_object_on_stdout(tmp_path):
    r = xdpnn("-j", "model", "show", tmp_path / "missing.npz")
    assert r.returncode == 3 and r.stderr == ""
    err = json.loads(r.stdout)
    assert set(err) == {"error", "exit_code"} and err["exit_code"] == 3
    assert "load model" in err["error"] and "missing.npz" in err["error"]


def test_root_commands_refuse_other_users():
    r = xdpnn("verify", "--shape", "100-7-3", user=65534 if os.geteuid() == 0 else None)
    assert_error(r, 9, "verify", "needs root")


# --- root: BPF_PROG_TEST_RUN ------------------------------------------------

@root
def test_verify_random_shape_reports_no_mismatch():
    r = xdpnn("verify", "--shape", "100-7-3", "--samples", "500")
    assert r.returncode == 0, r.stderr
    assert re.match(r"model 100-7-3 \(payload\): 500 inputs, 0 mismatches between kernel and "
                    r"reference", r.stdout), r.stdout


@root
def test_verify_json(model_file):
    r = xdpnn("-j", "verify", "--model", model_file, "--samples", "300", "--seed", "2")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["model"], res["samples"], res["seed"], res["mismatches"]) == \
        ("100-7-3", 300, 2, 0)


@root
@pytest.mark.parametrize("args,code,names", [
    (["--shape", "2000-7-3"], 3, ["verify", "shape 2000-7-3", "layers[0] (inputs)"]),
    (["--shape", "300-7-3", "--input", "headers"], 3, ["verify", "1..256 in headers mode"]),
    (["--shape", "100-7-3", "--samples", "0"], 2, ["verify", "--samples 0"]),
    (["--shape", "100-7-x"], 2, ["verify", "shape 100-7-x: expected sizes joined by '-'"]),
    (["--model", "/nonexistent/xh1.npz"], 3, ["verify", "load model", "/nonexistent/xh1.npz"]),
])
def test_verify_bad_arguments(args, code, names):
    assert_error(xdpnn("verify", *args), code, *names)


@root
def test_predict_hex_matches_reference(model_file):
    frames = [packets.request(bytes(range(13)), 9595),
              packets.request(bytes(range(13)), 9596),
              packets.request(b"\x01", 9595)]
    r = xdpnn("predict", "--model", model_file, "--hex", *[f.hex() for f in frames])
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 3 and all(row.endswith("yes") for row in rows), r.stdout

    r = xdpnn("-j", "predict", "--model", model_file, "--hex", *[f.hex() for f in frames])
    rows = json.loads(r.stdout)
    assert [(x["kernel"]["input"], x["match"]) for x in rows] == \
        [("classified", True), ("other", True), ("short_payload", True)]
    assert rows[0]["kernel"]["class"] == rows[0]["reference"]["class"] is not None


@root
@pytest.mark.parametrize("hex_,names", [
    ("0011", ["predict", "frame 0", "2 bytes"]),
    ("zz", ["predict", "--hex", "not hexadecimal"]),
    ("00" * (MAX_FRAME + 1), ["predict", "frame 0", f"{MAX_FRAME + 1} bytes",
                              f"up to {MAX_FRAME} bytes"]),
])
def test_predict_bad_frames_exit_2(model_file, hex_, names):
    assert_error(xdpnn("predict", "--model", model_file, "--hex", hex_), 2, *names)


# --- root: interfaces and namespaces (own namespace only) -------------------

@root
def test_a_model_with_a_large_training_report_attaches(veth_pair, tmp_path):
    """The attach record names the model; the provenance stays in the file
    (a 256-column CSV model's report once made attach refuse the model)."""
    m = random_model([100, 7, 3], seed=4)
    m.provenance = {"report": {"columns": ["c%d" % i for i in range(256)], "note": "x" * 30000}}
    path = tmp_path / "big-report.npz"
    m.save(path)
    xdpnn("-n", veth_pair, "attach", "xv0", "--model", path, check=True)
    try:
        rec = [s for s in json.loads(xdpnn("-j", "status").stdout) if s["netns"] == veth_pair]
        assert rec[0]["state"] == "attached" and rec[0]["model"]["shape"] == "100-7-3"
    finally:
        xdpnn("-n", veth_pair, "detach", "xv0", check=True)


@root
def test_a_port_in_headers_mode_is_refused_not_ignored(netns_name, model_file, tmp_path):
    path = tmp_path / "h.npz"
    random_model([256, 8, 3], mode="headers").save(path)
    for model, extra in ((path, []), (model_file, ["--input", "headers"])):
        r = xdpnn("-n", netns_name, "attach", "lo", "--model", model, "--port", "9000", *extra)
        assert_error(r, 2, "attach", "--port 9000", "headers mode has no request port")


@root
def test_attach_to_nonexistent_interface_exits_5(netns_name, model_file):
    r = xdpnn("-n", netns_name, "attach", "xh1nosuch0", "--model", model_file)
    assert_error(r, 5, "attach", "xh1nosuch0", netns_name)
    assert not os.path.exists(datapath.pin_dir("xh1nosuch0", netns_name))


@root
def test_missing_netns_exits_5(netns_name, model_file):
    missing = netns_name + "-gone"
    assert not os.path.exists(f"/run/netns/{missing}")
    assert_error(xdpnn("-n", missing, "attach", "lo", "--model", model_file), 5,
                 "attach", missing)
    assert not os.path.exists(datapath.pin_dir("lo", missing))


@root
@pytest.mark.parametrize("command", [
    ["stats", "lo"],
    ["stats", "lo", "1", "1"],
    ["detach", "lo"],
    ["swap", "lo", "--model", "MODEL"],
    ["set", "lo", "--action", "all=drop"],
])
def test_not_attached_exits_7(netns_name, model_file, command):
    args = [model_file if a == "MODEL" else a for a in command]
    assert_error(xdpnn("-n", netns_name, *args), 7, command[0], "lo", netns_name,
                 "not attached")


@root
def test_not_attached_json(netns_name):
    r = xdpnn("-j", "-n", netns_name, "stats", "lo")
    assert r.returncode == 7 and r.stderr == ""
    err = json.loads(r.stdout)
    assert err["exit_code"] == 7 and netns_name in err["error"]
