"""A counting XDP program (bpf/sink.c) on a topology's outer veth ends."""
from __future__ import annotations

import os
from importlib import resources

from xdpnn.loader import bpf_sys
from xdpnn.loader.compile import captured_stderr, import_bcc
from xdpnn.loader.netns import ifindex, netns

SOURCE = resources.files("xdpnn.bpf") / "sink.c"


class Sink:
    """Counts (and passes, or drops) every frame arriving on ns/iface."""

    def __init__(self, ns: str, iface: str, drop: bool = False, attach: bool = True):
        BPF = import_bcc()
        self.ns, self.iface = ns, iface
        with captured_stderr():
            self.bpf = BPF(text=SOURCE.read_text(), cflags=["-DSINK_DROP"] if drop else [])
        self.fn = self.bpf.load_func("sink", BPF.XDP)
        self.link = None
        if attach:
            self.attach()

    def attach(self) -> None:
        """On the interface (again): programs built once, attached in turn."""
        with netns(self.ns):
            self.link = bpf_sys.xdp_link(ifindex(self.iface, self.ns), self.fn.fd, "native",
                                         self.iface)

    def detach(self) -> None:
        if self.link is not None:
            os.close(self.link)  # its last reference: the program comes off the interface
            self.link = None

    def counts(self) -> tuple[int, int]:
        """(packets, bytes) since attach."""
        t = self.bpf["sink_count"]
        return int(sum(t[0])), int(sum(t[1]))

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
