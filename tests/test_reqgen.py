"""Tier 3, the live-frames request generator (traffic/reqgen.py): every
request it sends is answered, by the XDP server and by the user-space C
server alike, and its counter on the client's port counts each reply once
with the reference's class.

    client [c0] reqgen + reqcount  <->  [s0] attach --serve, or the C server
"""
from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

from xdpnn.loader import bpf_sys, compile  # noqa: E402
from xdpnn.loader.netns import ifindex, netns  # noqa: E402
from xdpnn.trainer import reference  # noqa: E402
from xdpnn.trainer.model import DEFAULT_PORT, random_model  # noqa: E402
from xdpnn.traffic.reqgen import ReqGen  # noqa: E402
from xdpnn.traffic.sink import Sink  # noqa: E402
from xdpnn.traffic.topology import ClientServer  # noqa: E402
from xdpnn.traffic.userserve import UserServer  # noqa: E402

N = 2048
BURST = 64  # below veth's ring of 256: no request is dropped on the way


def send_all(g: ReqGen) -> dict:
    """N requests in bursts, then the counts once every reply is in (or 10 s)."""
    for _ in range(N // BURST):
        assert g.send(BURST, 5.0).frames == BURST
        time.sleep(0.002)
    deadline = time.monotonic() + 10
    while (c := g.counts())["ok"] + c["wrong"] < N and time.monotonic() < deadline:
        time.sleep(0.05)
    return c


@pytest.mark.parametrize("server", ["xdp", "user_c"])
def test_every_request_answered_with_the_reference_class(server):
    model = random_model([256, 32, 16, 4], seed=3)
    bits = np.random.default_rng(5).integers(0, 2, (300, 256), dtype=np.uint8)
    inputs = [reference.bytes_from_bits(b) for b in bits]
    classes = [int(c) for c in reference.predict(model, bits)]
    assert len(set(classes)) > 1  # a wrong class would be noticed
    with ClientServer(f"rg-{os.getpid()}-{uuid.uuid4().hex[:6]}", sink=False) as t, \
            ReqGen(t.client, "c0", inputs, classes, DEFAULT_PORT) as g:
        g.attach()
        if server == "xdp":
            prog = compile.build(model, defines=("NN_SERVE",))
            try:
                with netns(t.server):
                    link = bpf_sys.xdp_link(ifindex("s0", t.server), prog.prog_fd, "native", "s0")
                try:
                    c = send_all(g)
                finally:
                    os.close(link)
            finally:
                prog.close()
        else:
            # Live frames reach s0's stack through an XDP program that passes them.
            with Sink(t.server, "s0"), UserServer(model, DEFAULT_PORT, "c", t.server):
                c = send_all(g)
    # other: the stacks' own frames (IPv6 neighbour discovery), not replies
    assert (c["ok"], c["wrong"]) == (N, 0)
