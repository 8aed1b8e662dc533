"""The live-frames request generator: serving requests at millions per
second from one CPU, for a server's peak (bench --serving), where a UDP
client (traffic/serve_load.c) would be the bottleneck.

BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs bpf/reqgen.c's `reqgen`
in the client's namespace: request i is prepared request i % SLOTS with id
i, sent out of the client's port to whichever server answers on the other
side (XDP, or a UDP socket: the frames reach the server's stack as sent).
`reqcount`, attached to the client's port in its place, counts the replies
by whether their class is the reference's for their request, and drops
them.  No RTT: this is for rates; serve_load measures latency.

    with ReqGen(ns, "c0", inputs, classes, port) as g:
        g.attach()
        sent = g.send(count, max_seconds)
        g.counts()   # {"ok": ..., "wrong": ..., "other": ...}
"""
from __future__ import annotations

import os
from importlib import resources

from xdpnn.client import encode_request
from xdpnn.loader import bpf_sys
from xdpnn.loader.compile import BPF_DIR, captured_stderr, import_bcc
from xdpnn.loader.netns import ifindex, netns
from xdpnn.traffic import packets
from xdpnn.traffic.livegen import Sent, run_live

SOURCE = resources.files("xdpnn.bpf") / "reqgen.c"
SLOTS = 1024  # requests cycled through (a power of two: the programs mask)


class ReqGen:
    """Requests of inputs[i % SLOTS] (equal-length bytes) to UDP `port` from
    ns/iface, and the count of replies whose class is classes[i % SLOTS]."""

    def __init__(self, ns: str, iface: str, inputs: list[bytes], classes: list[int], port: int):
        if not inputs or len({len(x) for x in inputs}) != 1 or len(classes) != len(inputs):
            raise ValueError("reqgen: expected inputs of one, non-zero length, and a class each")
        frames = [packets.request(encode_request(0, inputs[i % len(inputs)]), port,
                                  udp_checksum=False) for i in range(SLOTS)]
        self.classes = [classes[i % len(inputs)] for i in range(SLOTS)]
        # One byte more than a request: reqgen moves the start on by one.
        self.frame = b"\0" + frames[0]
        self.ns, self.iface, self.link = ns, iface, None
        BPF = import_bcc()
        cflags = [f"-DGEN_SLOTS={SLOTS}", f"-DGEN_FRAME_BYTES={len(frames[0])}",
                  f"-DGEN_PORT={port}", f"-I{BPF_DIR}"]
        with captured_stderr():
            self.bpf = BPF(text=SOURCE.read_text(), cflags=cflags)
        try:
            self.gen = self.bpf.load_func("reqgen", BPF.XDP).fd
            self.count = self.bpf.load_func("reqcount", BPF.XDP).fd
            for i in range(SLOTS):
                bpf_sys.map_update(self.bpf["gen_frames"].map_fd, i, frames[i], "gen_frames")
                bpf_sys.map_update(self.bpf["gen_classes"].map_fd, i, bytes([self.classes[i]]),
                                   "gen_classes")
            with netns(ns):
                self.ifindex = ifindex(iface, ns)
            bpf_sys.map_update(self.bpf["gen_port"].map_fd, 0, self.ifindex.to_bytes(4, "little"),
                               "gen_port")
        except BaseException:
            self.bpf.cleanup()
            raise

    def attach(self) -> None:
        """reqcount on the client's port (which replies need: XDP_TX from a
        veth peer reaches only a port that runs XDP)."""
        with netns(self.ns):
            self.link = bpf_sys.xdp_link(self.ifindex, self.count, "native", self.iface)

    def detach(self) -> None:
        if self.link is not None:
            os.close(self.link)
            self.link = None

    def send(self, count: int, max_seconds: float = 30.0, cpu: int | None = None) -> Sent:
        """Sends `count` requests as fast as the CPU can (the calling thread
        pinned to `cpu` meanwhile, if given), or fewer if max_seconds runs
        out first (it may overrun by one call of RUN_FRAMES)."""
        mask = os.sched_getaffinity(0)
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            return run_live(self.ns, self.gen, self.frame, count, max_seconds)
        finally:
            os.sched_setaffinity(0, mask)

    def counts(self) -> dict:
        """Replies counted since the start: ok (the reference's class),
        wrong (another class or an error status), other (not a reply)."""
        t = self.bpf["gen_count"]
        return {k: int(sum(t[i])) for i, k in enumerate(("ok", "wrong", "other"))}

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
