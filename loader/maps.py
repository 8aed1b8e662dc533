"""The maps of bpf/xdpnn.c as processes that open pinned maps without
compiling (stats, swap, set, detach) see them: their names, and ctypes
mirrors of the value structs in bpf/xdpnn_shared.h.

Sizes and enum names come from the header itself (bpf/shared.py), and
compile.check_layouts() compares each mirror with the type BCC compiled
from it, at every build, so the two cannot drift apart silently.
"""
from __future__ import annotations

import ctypes

import numpy as np

from xdpnn.bpf.shared import (ACTIONS, FLOW_EVENTS, INPUT_RESULTS, MAX_CLASSES,  # noqa: F401
                              META_BYTES, SERVE_STATUS, SIDES, SRV, TX_SLOTS, TX_TARGETS, VERDICTS)

# The maps a build hands out and an attach pins, by the names in bpf/xdpnn.c.
MAP_NAMES = ("nn_model", "nn_config", "nn_counters", "nn_tx_port", "nn_meta", "nn_serve",
             "nn_progs", "nn_port_models")
# What the program of an added model has of its own (the rest it shares with
# the attached program, or does without: bpf/xdpnn.c, NN_MODEL_ID).
ADDED_MAP_NAMES = ("nn_model", "nn_counters")
# An added model chosen by port (not serving) has its own actions too.
PORT_MODEL_MAP_NAMES = ADDED_MAP_NAMES + ("nn_config",)
# Pinned beside MAP_NAMES in flow mode only: `xdpnn flows`, evictions in `stats`.
FLOW_MAP_NAMES = ("nn_flows",)
SERVE_ENTRIES = SRV["models"] + 1  # nn_serve: one per model id, then the rest


class Config(ctypes.Structure):
    _fields_ = [("udp_port", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32 * 2), ("action", ctypes.c_uint8 * MAX_CLASSES),
                ("tx_slot", ctypes.c_uint8 * MAX_CLASSES), ("port_models", ctypes.c_uint32)]


class Counters(ctypes.Structure):
    _fields_ = [("input", ctypes.c_uint64 * len(INPUT_RESULTS)),
                ("verdict", ctypes.c_uint64 * len(VERDICTS)),
                ("class_packets", ctypes.c_uint64 * MAX_CLASSES),
                ("flow", ctypes.c_uint64 * len(FLOW_EVENTS)),
                ("class_flows", ctypes.c_uint64 * MAX_CLASSES)]


class ServeCounters(ctypes.Structure):
    _fields_ = [("requests", ctypes.c_uint64), ("replies", ctypes.c_uint64),
                ("status", ctypes.c_uint64 * len(SERVE_STATUS))]


class FlowKey(ctypes.Structure):
    """struct nn_flow_key (bpf/flow.h): host-order addresses and ports, the
    lower (address, port) end first."""
    _fields_ = [("addr", ctypes.c_uint32 * 2), ("port", ctypes.c_uint16 * 2),
                ("proto", ctypes.c_uint32)]


class Flow(ctypes.Structure):
    """struct nn_flow (bpf/flow.h): a flow table entry."""
    _fields_ = [("record", ctypes.c_uint8 * 32), ("last_ns", ctypes.c_uint64),
                ("init_addr", ctypes.c_uint32), ("init_port", ctypes.c_uint16),
                ("packets", ctypes.c_uint8), ("cls", ctypes.c_uint8), ("state", ctypes.c_uint8),
                ("payload_seen", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 6)]


FLOW_STATES = ("open", "deciding", "final")  # enum flow_state (bpf/flow.h)
FLOW_NO_CLASS = 255  # NN_FLOW_NO_CLASS

MIRRORS = {"nn_config": Config, "nn_counters": Counters, "nn_serve": ServeCounters}


def sum_counters(raw: bytes, n_cpus: int) -> dict[str, np.ndarray]:
    """One entry's per-CPU counter values (as read from the map) summed over CPUs."""
    # Per-CPU values are laid out one per CPU, each rounded up to 8 bytes.
    per_cpu = np.frombuffer(raw, "<u8").reshape(n_cpus, -1).sum(axis=0)
    a, b, f = len(INPUT_RESULTS), len(VERDICTS), len(FLOW_EVENTS)
    c = a + b + MAX_CLASSES
    return {"input": per_cpu[:a], "verdict": per_cpu[a:a + b],
            "class_packets": per_cpu[a + b:c], "flow": per_cpu[c:c + f],
            # Per-CPU parts may wrap below zero (xdpnn_shared.h); the sum is right.
            "class_flows": per_cpu[c + f:c + f + MAX_CLASSES]}


def sum_serve(raw: bytes, n_cpus: int) -> dict:
    """One nn_serve entry (as read from the map) summed over CPUs."""
    v = np.frombuffer(raw, "<u8").reshape(n_cpus, -1).sum(axis=0)
    return {"requests": int(v[0]), "replies": int(v[1]),
            "status": {name: int(n) for name, n in zip(SERVE_STATUS, v[2:])}}
