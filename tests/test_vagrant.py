"""The Vagrant flow's file is valid (no provider needed to check it)."""
import subprocess
from pathlib import Path

VAGRANT_DIR = Path(__file__).resolve().parent.parent / "vagrant"


def test_vagrantfile_validates():
    r = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
