"""xdpnn as users install it: a wheel built from the tree, installed into a
fresh venv (over Debian's python3, where BCC lives) and run from another
directory, with nothing of the checkout on its path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".vm", "results", "build", "*.egg-info",
                                     "__pycache__", ".pytest_cache", "vagrant")


def run(*argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} exited {r.returncode}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    shutil.copytree(REPO, tmp / "src", ignore=NOT_SOURCES)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
        "--no-build-isolation", "-w", tmp / "dist", tmp / "src")
    wheel = next((tmp / "dist").glob("xdpnn-*.whl"))
    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", tmp / "venv")
    run(tmp / "venv/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        wheel)
    shutil.rmtree(tmp / "src")
    return tmp / "venv"


def xdpnn(venv, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return run(venv / "bin/xdpnn", *args, cwd=cwd, env=env)


def test_the_wheel_installs_one_namespace_with_its_data(venv):
    site = Path(run(venv / "bin/python", "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = {"loader", "trainer", "traffic", "bpf", "models", "client"}
    assert not ours & {p.name for p in site.iterdir()}
    package = site / "xdpnn"
    for data in ("bpf/xdpnn.c", "bpf/xdpnn_shared.h", "bpf/parse.h", "bpf/bnn.h", "bpf/vertical.h",
                 "bpf/sink.c",
                 "bpf/livegen.c", "traffic/bnn_user.c", "traffic/bnn_fixed.c",
                 "models/digits-default.npz", "loader/cost_model.json"):
        assert (package / data).is_file(), data
    where = run(venv / "bin/python", "-c", "import xdpnn.loader.cli as c; print(c.__file__)",
                cwd="/")
    assert where.startswith(str(site)), where


@pytest.mark.root
def test_installed_command_verifies_attaches_and_detaches(venv, veth_pair, tmp_path):
    out = xdpnn(venv, "verify", "--shape", "100-7-3", "--samples", "200", cwd=tmp_path)
    assert "200 inputs, 0 mismatches" in out
    xdpnn(venv, "model", "random", "100-7-3", "--out", "m.npz", cwd=tmp_path)
    xdpnn(venv, "-n", veth_pair, "attach", "xv0", "--model", "m.npz", cwd=tmp_path)
    status = json.loads(xdpnn(venv, "status", "-j", cwd=tmp_path))
    mine = [s for s in status if s.get("netns") == veth_pair]
    assert [(s["iface"], s["state"]) for s in mine] == [("xv0", "attached")]
    xdpnn(venv, "-n", veth_pair, "detach", "xv0", cwd=tmp_path)
    assert not os.path.exists(f"/sys/fs/bpf/xdpnn/xv0@{veth_pair}")
