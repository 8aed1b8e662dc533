"""Test topologies: network namespaces joined by veth pairs, made by the
command or test that uses them and deleted on exit, Ctrl-C included.

    sender [g0] <-> [d0] host under test [d1] <-> [s0] receiver

The host under test forwards at layer 2 (a bump in the wire).  The sender
and receiver have no IP addresses and IPv6 is off, so their stacks never
answer (no ARP, ICMP errors or TCP resets): every frame on the wire is one
the test sent, and counters can be checked exactly.
"""
from __future__ import annotations

import os
import subprocess

from xdpnn.traffic import packets


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class Topology:
    """Three namespaces, <prefix>-gen, <prefix>-dut and <prefix>-sink."""

    def __init__(self, prefix: str | None = None):
        prefix = prefix or f"xdpnn-{os.getpid()}"
        self.gen, self.dut, self.sink = (f"{prefix}-{n}" for n in ("gen", "dut", "sink"))
        self.created: list[str] = []

    def __enter__(self) -> "Topology":
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    def create(self) -> None:
        for ns in (self.gen, self.dut, self.sink):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        ip("link", "add", "g0", "netns", self.gen, "address", packets.SRC_MAC, "type", "veth",
           "peer", "name", "d0", "netns", self.dut)
        ip("link", "add", "d1", "netns", self.dut, "type", "veth",
           "peer", "name", "s0", "netns", self.sink, "address", packets.DST_MAC)
        for ns, dev in ((self.gen, "g0"), (self.dut, "d0"), (self.dut, "d1"), (self.sink, "s0")):
            ip("-n", ns, "link", "set", dev, "up")

    def destroy(self) -> None:
        """Deleting a namespace deletes its veth ends and their XDP programs."""
        while self.created:
            ip("netns", "del", self.created.pop(), check=False)
