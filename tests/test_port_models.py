"""Models chosen by destination port on an interface that does not serve
(`xdpnn model add --port`): the attached headers-mode model takes every
packet but those to the added model's port, which its own program
classifies, with its own actions and counters; removing it gives the port
back.  Verdicts of the attached program (tail call included) are checked
frame by frame with test runs against each model's reference, and frames
sent through the veth are counted by the model their port names.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

from cli import xdpnn  # noqa: E402
from xdpnn.trainer import features, reference  # noqa: E402
from xdpnn.trainer.model import random_model  # noqa: E402

PORT = 53
DROP = 1  # XDP_DROP; other classes take the default path (in a test run, a
# redirect: the run's ingress is not the interface, so its slot is not skipped)


def frames(n: int, seed: int) -> list[bytes]:
    """IPv4 TCP and UDP frames, a third of them to PORT, with random ports,
    TTLs and payloads (so that random models see several classes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        l4 = UDP if rng.integers(2) else TCP
        dport = PORT if rng.integers(3) == 0 else int(rng.integers(1, 65536))
        payload = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        out.append(raw(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", ttl=int(rng.integers(1, 256)),
                                    tos=int(rng.integers(256)))
                       / l4(sport=int(rng.integers(1, 65536)), dport=dport) / Raw(payload)))
    return out


def classes(model, frames_: list[bytes]) -> np.ndarray:
    bits = [features.model_input(f, "headers", model.sizes[0], 0)[1] for f in frames_]
    return reference.predict(model, np.array(bits))


def dport(frame: bytes) -> int:
    return int.from_bytes(frame[36:38], "big")  # Ethernet 14 + IPv4 20 + 2


def verdicts(ns: str, frames_: list[bytes]) -> np.ndarray:
    """Each frame through the attached program, as pinned (test runs)."""
    from xdpnn.loader import bpf_sys
    from xdpnn.loader.netns import netns
    with netns(ns):
        fd = bpf_sys.get_pinned(f"/sys/fs/bpf/xdpnn/xv1@{ns}/prog")
    try:
        return np.array([bpf_sys.test_run(fd, f)[0] for f in frames_])
    finally:
        os.close(fd)


def test_a_port_goes_to_its_model_with_its_actions_until_removed(veth_pair, tmp_path):
    from xdpnn.traffic.sender import send_frames
    ns = veth_pair
    attached = random_model([256, 16, 4], seed=21, mode="headers")
    added = random_model([128, 32, 3], seed=22, mode="headers")
    paths = {"a": tmp_path / "a.npz", "b": tmp_path / "b.npz"}
    attached.save(paths["a"])
    added.save(paths["b"])
    for dev in ("xv0", "xv1"):
        import subprocess
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    # The attached model drops its odd classes, the added one its even classes.
    xdpnn("-n", ns, "attach", "xv1", "--model", paths["a"], "--action", "1=drop",
          "--action", "3=drop", check=True)
    try:
        xdpnn("-n", ns, "model", "add", "xv1", "--model", paths["b"], "--id", "2", "--port",
              str(PORT), "--action", "0=drop", "--action", "2=drop", check=True)
        test = frames(3000, seed=1)
        to_port = np.array([dport(f) == PORT for f in test])
        ca, cb = classes(attached, test), classes(added, test)
        assert len(set(cb[to_port])) == 3 and len(set(ca[~to_port])) == 4
        want = np.where(to_port, cb % 2 == 0, ca % 2 == 1)
        got = verdicts(ns, test) == DROP
        assert (got == want).all(), f"{(got != want).sum()} of {len(test)} verdicts differ"

        # Through the veth: each model counts the classes of its frames.
        sent = frames(400, seed=2)
        sent_to = np.array([dport(f) == PORT for f in sent])
        before = json.loads(xdpnn("-n", ns, "-j", "stats", "xv1", check=True).stdout)
        assert send_frames(ns, "xv0", sent) == len(sent)
        after = json.loads(xdpnn("-n", ns, "-j", "stats", "xv1", check=True).stdout)
        diff = lambda s, t: [t[k] - s[k] for k in s]  # noqa: E731
        assert diff(before["models"]["2"]["classes"], after["models"]["2"]["classes"]) == \
            np.bincount(classes(added, [f for f, t in zip(sent, sent_to) if t]),
                        minlength=3).tolist()
        assert diff(before["classes"], after["classes"]) == \
            np.bincount(classes(attached, [f for f, t in zip(sent, sent_to) if not t]),
                        minlength=4).tolist()

        rows = json.loads(xdpnn("-n", ns, "-j", "model", "list", "xv1", check=True).stdout)
        assert [(r["id"], r["port"]) for r in rows] == [(0, None), (2, PORT)]
        assert rows[1]["classified"] == int(to_port.sum() + sent_to.sum())
        status = xdpnn("-n", ns, "status", check=True).stdout
        assert f"packets to port {PORT}; actions: class0=drop, class2=drop" in status

        # Refused: another model on the same port, a serving-only request.
        r = xdpnn("-n", ns, "model", "add", "xv1", "--model", paths["b"], "--id", "3",
                  "--port", str(PORT), check=False)
        assert r.returncode == 7 and f"port {PORT} already goes to model 2" in r.stderr
        r = xdpnn("-n", ns, "model", "add", "xv1", "--model", paths["b"], "--id", "3",
                  check=False)
        assert r.returncode == 2 and "give --port" in r.stderr

        xdpnn("-n", ns, "model", "remove", "xv1", "--id", "2", check=True)
        assert ((verdicts(ns, test) == DROP) == (ca % 2 == 1)).all()
        assert not [n for n in os.listdir(f"/sys/fs/bpf/xdpnn/xv1@{ns}") if n.startswith("model")]
    finally:
        xdpnn("-n", ns, "detach", "xv1", check=True)


def test_a_swapped_port_model_takes_its_actions_by_position(veth_pair, tmp_path):
    """`xdpnn swap --id N` of a model chosen by port, for one whose classes
    have other names: class k keeps class k's action (the kernel's nn_config
    of that model is by position), and status, model list and stats name
    the new classes."""
    ns = veth_pair
    attached = random_model([256, 16, 4], seed=21, mode="headers")
    old = random_model([128, 32, 3], seed=22, mode="headers")
    new = random_model([128, 32, 3], seed=23, mode="headers")
    new.classes = ["web", "mail", "dns"]
    paths = {"a": tmp_path / "a.npz", "old": tmp_path / "old.npz", "new": tmp_path / "new.npz"}
    for m, p in ((attached, paths["a"]), (old, paths["old"]), (new, paths["new"])):
        m.save(p)
    xdpnn("-n", ns, "attach", "xv1", "--model", paths["a"], "--action", "1=drop", check=True)
    try:
        xdpnn("-n", ns, "model", "add", "xv1", "--model", paths["old"], "--id", "2", "--port",
              str(PORT), "--action", "0=drop", "--action", "2=drop", check=True)
        r = json.loads(xdpnn("-n", ns, "-j", "swap", "xv1", "--id", "2", "--model", paths["new"],
                             check=True).stdout)
        assert r["models"]["2"]["actions"] == {"web": "drop", "mail": "count", "dns": "drop"}
        assert r["actions"] == {"class0": "count", "class1": "drop", "class2": "count",
                                "class3": "count"}  # the attached model's, untouched
        status = xdpnn("-n", ns, "status", check=True).stdout
        assert f"packets to port {PORT}; actions: web=drop, dns=drop" in status, status
        rows = json.loads(xdpnn("-n", ns, "-j", "model", "list", "xv1", check=True).stdout)
        assert rows[1]["classes"] == new.classes and rows[1]["path"] == str(paths["new"])
        assert rows[1]["actions"] == r["models"]["2"]["actions"]
        stats = json.loads(xdpnn("-n", ns, "-j", "stats", "xv1", check=True).stdout)
        assert list(stats["models"]["2"]["classes"]) == new.classes

        # The kernel: the new model's classes 0 and 2 dropped on the port,
        # the attached model's class 1 elsewhere.
        test = frames(3000, seed=3)
        to_port = np.array([dport(f) == PORT for f in test])
        ca, cn = classes(attached, test), classes(new, test)
        assert len(set(cn[to_port])) == 3
        want = np.where(to_port, cn != 1, ca == 1)
        got = verdicts(ns, test) == DROP
        assert (got == want).all(), f"{(got != want).sum()} of {len(test)} verdicts differ"
    finally:
        xdpnn("-n", ns, "detach", "xv1", check=True)
