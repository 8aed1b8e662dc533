"""The Vagrant flow's file is valid (no provider needed to check it), both
as laptops use it and in the isolated, emulated set-up (vagrant/README.md)."""
import os
import subprocess
from pathlib import Path

import pytest

from cli import HANG_GUARD_S

VAGRANT_DIR = Path(__file__).resolve().parent.parent / "vagrant"


@pytest.mark.parametrize("env", [
    {},
    {"XDPNN_BOX": "xdpnn-bookworm", "XDPNN_VM_ISOLATED": "1", "XDPNN_VM_ACCEL": "tcg"},
], ids=["public box", "local box, isolated, emulated"])
def test_vagrantfile_validates(env, tmp_path):
    # Vagrant's own state goes to tmp_path, not into the checkout.
    env = {**os.environ, **env, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile")}
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR,
                       env=env, capture_output=True, text=True,
                       timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
