"""The live-frames generator: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES
replays one prepared frame through bpf/livegen.c, which writes a different
input into its payload each time and redirects it out of the sender's port.
Millions of frames per second from one CPU, with no kernel module.

The program runs inside the sender's namespace (bpf_redirect resolves the
ifindex there), and stops after exactly `count` frames; a time bound splits
the count into runs and stops between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

import numpy as np

from xdpnn.loader import bpf_sys
from xdpnn.loader.compile import captured_stderr, import_bcc
from xdpnn.loader.netns import ifindex, netns
from xdpnn.traffic import packets

SOURCE = resources.files("xdpnn.bpf") / "livegen.c"
SLOTS = 1024  # inputs cycled through (a power of two: the program masks)
RUN_FRAMES = 1 << 16  # frames per BPF_PROG_RUN call: the time bound is checked between calls


@dataclass
class Sent:
    frames: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class LiveGen:
    """Sends requests to `port` from ns/iface, cycling through `payloads`
    (equal-length byte strings; at most SLOTS of them are used)."""

    def __init__(self, ns: str, iface: str, payloads: list[bytes], port: int):
        if not payloads or len({len(p) for p in payloads}) != 1:
            raise ValueError("livegen: expected payloads of one, non-zero length")
        n_bytes = len(payloads[0])
        self.frame = packets.request(payloads[0], port, udp_checksum=False)
        self.ns, self.iface = ns, iface
        BPF = import_bcc()
        cflags = [f"-DGEN_SLOTS={SLOTS}", f"-DGEN_PAYLOAD_BYTES={n_bytes}",
                  f"-DGEN_PAYLOAD_OFFSET={len(self.frame) - n_bytes}"]
        with captured_stderr():
            self.bpf = BPF(text=SOURCE.read_text(), cflags=cflags)
        try:
            self.fd = self.bpf.load_func("livegen", BPF.XDP).fd
            table = self.bpf["gen_payloads"]
            for i in range(SLOTS):
                bpf_sys.map_update(table.map_fd, i, payloads[i % len(payloads)], "gen_payloads")
            with netns(ns):
                port_index = ifindex(iface, ns)
            bpf_sys.map_update(self.bpf["gen_port"].map_fd, 0,
                               port_index.to_bytes(4, "little"), "gen_port")
        except BaseException:
            self.bpf.cleanup()
            raise

    def send(self, count: int, max_seconds: float = 30.0) -> Sent:
        """Sends `count` frames, or fewer if max_seconds runs out first (it
        may overrun by one call of RUN_FRAMES frames)."""
        return run_live(self.ns, self.fd, self.frame, count, max_seconds)

    def close(self) -> None:
        self.bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def random_payloads(n_bytes: int, seed: int = 0, n: int = SLOTS) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes() for _ in range(n)]


def run_live(ns: str, prog_fd: int, frame: bytes, count: int, max_seconds: float) -> Sent:
    """Runs a live-frames program on frame `count` times in namespace ns, in
    calls of RUN_FRAMES, stopping between calls once max_seconds are gone."""
    sent, started = 0, time.monotonic()
    with netns(ns):
        while sent < count and time.monotonic() - started < max_seconds:
            n = min(RUN_FRAMES, count - sent)
            bpf_sys.test_run(prog_fd, frame, repeat=n, flags=bpf_sys.BPF_F_TEST_XDP_LIVE_FRAMES)
            sent += n
    return Sent(sent, time.monotonic() - started)
