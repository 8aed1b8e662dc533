"""Program arrays (bpf/tailcall.h): which XDP program each slot holds, and
putting a program in a slot or taking it out.

A slot change is one map update, atomic for packets: a frame tail-calls the
old program or the new one, or finds the slot empty and takes its caller's
fallback.  The array holds a reference to each program in it, so a program
put in a slot runs as long as it stays there, whatever else holds it.
"""
from __future__ import annotations

import ctypes
import errno

from xdpnn.loader import bpf_sys


def put(array_fd: int, slot: int, prog_fd: int, what: str) -> None:
    """Puts the program in the slot, in place of any program there."""
    bpf_sys.map_update(array_fd, slot, ctypes.c_uint32(prog_fd), what)


def clear(array_fd: int, slot: int, what: str) -> None:
    """Empties the slot; an empty slot stays empty."""
    try:
        bpf_sys.map_delete(array_fd, slot, what)
    except bpf_sys.BpfError as e:
        if e.errno != errno.ENOENT:
            raise


def prog_id(array_fd: int, slot: int, what: str) -> int:
    """The id of the program in the slot, 0 for an empty one (a lookup from
    user space gives the program's id, not a descriptor)."""
    try:
        raw = bpf_sys.map_lookup(array_fd, slot, 4, what)
    except bpf_sys.BpfError as e:
        if e.errno == errno.ENOENT:
            return 0
        raise
    return int.from_bytes(raw, "little")


def slots(array_fd: int, what: str) -> dict[int, int]:
    """Slot -> program id, for every slot that holds a program."""
    ids = {k: prog_id(array_fd, k, what) for k in range(bpf_sys.map_info(array_fd).max_entries)}
    return {k: i for k, i in ids.items() if i}
