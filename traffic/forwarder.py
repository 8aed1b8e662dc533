"""The host under test in a benchmark: one compiled bpf/xdpnn.c variant
attached to both ends of the forwarding pair, forwarding between them with
its DEVMAP, without pins (the benchmark owns it and detaches it itself).

Variants are built once and attached in turn, so trials of different
variants can alternate in one run.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

from xdpnn.loader import bpf_sys, compile, maps
from xdpnn.loader.netns import ifindex, netns
from xdpnn.trainer.model import Model

XDP_MODE = "native"


def build(model: Model, ns: str, ports: tuple[str, str], udp_port: int,
          defines: tuple[str, ...] = ()) -> compile.Program:
    """Compiles a variant and points it at ns's forwarding pair; every class
    takes the default path (count), so each request is forwarded."""
    prog = compile.build(model, defines=defines)
    try:
        configure(prog, ns, ports, udp_port)
    except BaseException:
        prog.close()
        raise
    return prog


def configure(prog, ns: str, ports: tuple[str, str], udp_port: int) -> None:
    """Points a built program (or stages.Staged: the maps are stage 0's,
    shared by all) at ns's forwarding pair, every class on the default path."""
    with netns(ns):
        # DEVMAP entries resolve ifindexes in the caller's namespace.
        idx = [ifindex(p, ns) for p in ports]
        for slot, i in enumerate(idx):
            bpf_sys.map_update(prog.maps["nn_tx_port"], slot, ctypes.c_uint32(i),
                               "nn_tx_port")
    cfg = maps.Config(udp_port=udp_port)
    cfg.ifindex[0], cfg.ifindex[1] = idx
    compile.write_config(prog.maps["nn_config"], cfg)


@contextmanager
def attached(prog: compile.Program, ns: str, ports: tuple[str, str]):
    """prog on both ports of ns for the block; detached on every exit path."""
    links = []
    try:
        with netns(ns):
            for p in ports:
                links.append(bpf_sys.xdp_link(ifindex(p, ns), prog.prog_fd, XDP_MODE, p))
        yield
    finally:
        for link in links:  # closing a link's last reference detaches it
            os.close(link)


def counters(prog: compile.Program) -> dict:
    return compile.read_counters(prog.maps["nn_counters"])
