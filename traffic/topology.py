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
import signal
from pathlib import Path

import pyroute2.netns
from pyroute2 import IPRoute

from xdpnn.loader.netns import netns
from xdpnn.traffic import packets


class Topology:
    """Three namespaces, <prefix>-gen, <prefix>-dut and <prefix>-sink."""

    def __init__(self, prefix: str | None = None, queues: int = 1):
        prefix = prefix or f"xdpnn-{os.getpid()}"
        # veth queues per end: a frame sent on CPU c goes to the peer's
        # queue c % queues, whose NAPI runs on c, so with one queue per CPU
        # each CPU forwards its own frames end to end (xdpnn bench, scaling).
        self.queues = queues
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
            self.add_namespace(ns)
        self.add_veth("g0", self.gen, "d0", self.dut, mac_a=packets.SRC_MAC)
        self.add_veth("d1", self.dut, "s0", self.sink, mac_b=packets.DST_MAC)

    def add_namespace(self, ns: str) -> None:
        """A namespace with IPv6 off, deleted with the topology."""
        # pyroute2 makes the namespace in a forked child: Ctrl-C waits until
        # it exists and is listed for deletion (and never reaches the child,
        # which would carry on as a copy of this process).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pyroute2.netns.create(ns)
            self.created.append(ns)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        with netns(ns):  # /proc/sys/net is that of the thread that opens it
            for conf in ("all", "default"):
                Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")

    def add_veth(self, a: str, ns_a: str, b: str, ns_b: str, mac_a: str | None = None,
                 mac_b: str | None = None) -> None:
        """A veth pair a (in ns_a) <-> b (in ns_b), both up."""
        def end(ns, mac):
            return {"net_ns_fd": ns, "num_rx_queues": self.queues,
                    "num_tx_queues": self.queues, **({"address": mac} if mac else {})}
        with IPRoute() as ipr:  # each end is made directly in its namespace
            ipr.link("add", ifname=a, kind="veth", **end(ns_a, mac_a),
                     peer={"ifname": b, **end(ns_b, mac_b)})
        for ns, dev in ((ns_a, a), (ns_b, b)):
            with netns(ns), IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")

    def destroy(self) -> None:
        """Deleting a namespace deletes its veth ends and their XDP programs."""
        while self.created:
            try:
                pyroute2.netns.remove(self.created.pop())
            except OSError:
                pass  # already gone


# The client-server pair's addresses and MACs are those of packets.request,
# so that frames from a generator reach the server's stack as they are.
CLIENT_ADDRS = (packets.SRC_IP, packets.SRC_IP6)
SERVER_ADDRS = (packets.DST_IP, packets.DST_IP6)


class ClientServer(Topology):
    """Two namespaces, <prefix>-cli and <prefix>-srv, joined by c0 <-> s0, with
    IPv4 and IPv6 addresses and static neighbours, no routes beyond the
    link's own: a client's socket on c0 talks to a server on s0, whether the
    XDP program (attach --serve) or a user-space server answers.  c0 runs a
    counting XDP program (traffic/sink.py), because an XDP_TX reply from s0
    reaches c0 only if c0 runs NAPI, which an XDP program turns on
    (docs/datapath.md, "Forwarding, veth, and namespaces")."""

    def __init__(self, prefix: str | None = None, sink: bool = True):
        super().__init__(prefix)
        self.with_sink = sink  # False: the caller attaches its own program to c0
        prefix = prefix or f"xdpnn-{os.getpid()}"
        self.client, self.server = f"{prefix}-cli", f"{prefix}-srv"
        self.sink_prog = None

    def create(self) -> None:
        from xdpnn.traffic.sink import Sink
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for ns in (self.client, self.server):
                pyroute2.netns.create(ns)
                self.created.append(ns)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self.add_veth("c0", self.client, "s0", self.server, mac_a=packets.SRC_MAC,
                      mac_b=packets.DST_MAC)
        ends = {"c0": (self.client, CLIENT_ADDRS), "s0": (self.server, SERVER_ADDRS)}
        macs = {}
        for dev, (ns, addrs) in ends.items():
            with netns(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                macs[dev] = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
                ipr.addr("add", index=idx, address=addrs[0], prefixlen=24)
                ipr.addr("add", index=idx, address=addrs[1], prefixlen=64, flags=0x02)  # nodad
        for dev, (ns, _) in ends.items():
            other = "s0" if dev == "c0" else "c0"
            with netns(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                for addr in ends[other][1]:
                    ipr.neigh("add", dst=addr, lladdr=macs[other], ifindex=idx,
                              state=0x80)  # permanent
        if self.with_sink:
            self.sink_prog = Sink(self.client, "c0")

    def destroy(self) -> None:
        if self.sink_prog is not None:
            self.sink_prog.close()
            self.sink_prog = None
        super().destroy()
