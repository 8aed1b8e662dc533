"""`detach` always detaches, or says it could not: the pinned BPF links own
the attachments, wherever the interfaces went (tier 3: namespaces)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pyroute2.netns
import pytest
from pyroute2 import IPRoute

from cli import ROOT, xdpnn
from xdpnn.loader import bpf_sys
from xdpnn.loader.datapath import pin_dir
from xdpnn.loader.netns import ifindex, netns
from xdpnn.trainer.model import random_model

pytestmark = [pytest.mark.root, pytest.mark.netns]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=4).save(path)
    return path


def prog_on(ns: str, dev: str) -> int:
    with netns(ns):
        return bpf_sys.xdp_prog_id(ifindex(dev, ns))


def test_detach_after_the_interface_moved_to_another_namespace(veth_pair, model_file):
    xdpnn("-n", veth_pair, "attach", "xv0", "--model", model_file, check=True)
    elsewhere = f"xh1-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pyroute2.netns.create(elsewhere)
    try:
        with netns(veth_pair), IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="xv0")[0], net_ns_fd=elsewhere)
        assert prog_on(elsewhere, "xv0"), "the program moves with the interface"
        r = xdpnn("-n", veth_pair, "detach", "xv0")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("detached from xv0;"), r.stdout
        assert prog_on(elsewhere, "xv0") == 0
        assert not os.path.exists(pin_dir("xv0", veth_pair))
    finally:
        pyroute2.netns.remove(elsewhere)


def test_detach_after_the_interface_is_gone_says_so(veth_pair, model_file):
    xdpnn("-n", veth_pair, "attach", "xv0", "--model", model_file, check=True)
    with netns(veth_pair), IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="xv0")[0])
    r = xdpnn("-n", veth_pair, "detach", "xv0")
    assert r.returncode == 0, r.stderr
    assert "skipped xv0: already detached, or the interface is gone" in r.stdout
    assert not os.path.exists(pin_dir("xv0", veth_pair))


def test_detach_without_capabilities_never_claims_what_it_did_not_do(veth_pair, model_file):
    """Root with every capability dropped: exit 0 only if the program is off."""
    xdpnn("-n", veth_pair, "attach", "xv0", "--model", model_file, check=True)
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable,
                        "-m", "xdpnn.loader.cli", "-n", veth_pair, "detach", "xv0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    attached, pinned = prog_on(veth_pair, "xv0") != 0, os.path.exists(pin_dir("xv0", veth_pair))
    if r.returncode == 0:
        assert not attached and not pinned, r.stdout
    else:
        assert attached and pinned, r.stderr
        xdpnn("-n", veth_pair, "detach", "xv0", check=True)
        assert prog_on(veth_pair, "xv0") == 0


def test_a_killed_attach_leaves_no_program(veth_pair, model_file):
    """SIGKILL at any point of attach: what was not pinned yet is detached by
    the kernel (the link's last fd closed), and detach removes what was."""
    import signal
    import time
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        p = subprocess.Popen([sys.executable, "-m", "xdpnn.loader.cli", "-n", veth_pair,
                              "attach", "xv0", "--model", str(model_file)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if os.path.exists(pin_dir("xv0", veth_pair)):
            xdpnn("-n", veth_pair, "detach", "xv0", check=True)
        assert prog_on(veth_pair, "xv0") == 0, delay
        assert not os.path.exists(pin_dir("xv0", veth_pair))


@pytest.mark.parametrize("lost", [["nn_config"], ["nn_meta"], ["nn_counters", "link"]])
def test_partial_pins_are_reported_and_detach_cleans_up(veth_pair, model_file, lost):
    """What a killed attach or detach leaves: every command answers with an
    error or a state, never a traceback, and detach removes the rest."""
    xdpnn("-n", veth_pair, "attach", "xv0", "--model", model_file, check=True)
    try:
        pins = pin_dir("xv0", veth_pair)
        link = os.path.join(pins, "link")
        if "link" in lost:  # the program off the interface, as an interrupted attach leaves it
            fd = bpf_sys.get_pinned(link)
            bpf_sys.link_detach(fd, "test")
            os.close(fd)
        for name in lost:
            os.unlink(os.path.join(pins, name))
        for args in (["status"], ["-n", veth_pair, "stats", "xv0"],
                     ["-n", veth_pair, "set", "xv0", "--action", "all=drop"]):
            r = xdpnn(*args)
            assert r.returncode in (0, 7) and "Traceback" not in r.stderr, (args, r.stderr)
            assert r.returncode == 0 or "xdpnn detach" in r.stderr, (args, r.stderr)
        r = xdpnn("-j", "status")
        mine = [s for s in json.loads(r.stdout) if s.get("netns") == veth_pair]
        assert len(mine) == 1 and mine[0]["state"].startswith(("broken", "stale")), mine
        xdpnn("-n", veth_pair, "detach", "xv0", check=True)
        assert prog_on(veth_pair, "xv0") == 0 and not os.path.exists(pins)
    finally:  # a failed check must not leave pins behind
        xdpnn("-n", veth_pair, "detach", "xv0")
