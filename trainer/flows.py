"""Flow mode's records: the Python twin of bpf/flow.h.

``FlowTable.step(time_ns, frame)`` does what the XDP program does for one
packet: (input result, the flow's 32-byte record after this packet or None,
whether the model runs on it), and keeps the flow table and the flow
counters as the kernel does.  The table here never fills (the kernel's
evicts its least recently used flow: a test compares the two on fewer
flows than the kernel's table holds).  docs/datapath.md, "Flow mode",
documents the record.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from xdpnn.bpf.shared import FEATURE_BYTES, FLOW
from xdpnn.trainer import features

PACKETS, PAYLOAD, TIMEOUT_NS = FLOW["packets"], FLOW["payload"], FLOW["timeout_ms"] * 10**6
NO_CLASS = FLOW["no_class"]
TCP_FIN, TCP_RST = 0x01, 0x04
OPEN, DECIDING, FINAL = 0, 1, 2


@dataclass
class Flow:
    record: bytearray
    last_ns: int
    init: tuple[int, int]
    packets: int = 0
    cls: int = NO_CLASS
    state: int = OPEN
    payload_seen: int = 0


def gap_bucket(gap: int) -> int:
    return sum(gap >= 1 << (k + 14) for k in range(15))


def parse(frame: bytes):
    """(result, (proto, saddr, sport, daddr, dport, flags, payload)) as flow_input parses."""
    result, h = features._ipv4(frame)
    if result != "classified":
        return result, None
    ip, l4, proto = h["ip"], h["l4"], h["proto"]
    l4_hdr, sport, dport, flags = 0, 0, 0, 0
    if proto == features.IPPROTO_TCP:
        if len(l4) < 20:
            return "truncated", None
        if l4[12] >> 4 < 5:
            return "malformed", None
        l4_hdr = (l4[12] >> 4) * 4
        if l4_hdr > len(l4):
            return "truncated", None
        flags = l4[13]
        sport, dport = struct.unpack_from("!HH", l4)
    elif proto == features.IPPROTO_UDP:
        if len(l4) < 8:
            return "truncated", None
        l4_hdr = 8
        sport, dport = struct.unpack_from("!HH", l4)
    saddr, daddr = struct.unpack_from("!II", ip, 12)
    return "classified", (proto, saddr, sport, daddr, dport, flags, l4[l4_hdr:])


def _fresh(proto: int, dport: int, now: int, init) -> Flow:
    rec = bytearray(FEATURE_BYTES)
    rec[0], rec[1], rec[2] = proto, dport >> 8, dport & 0xFF
    return Flow(rec, now, init)


@dataclass
class FlowTable:
    flows: dict = field(default_factory=dict)
    counters: dict = field(default_factory=lambda: {"new": 0, "expired": 0, "final": 0,
                                                    "cached": 0})
    class_flows: dict = field(default_factory=dict)  # class -> flows whose latest it is

    def step(self, now: int, frame: bytes):
        """(result, record bytes or None, infer): infer is False for a final flow's
        packets, which take the cached class (``self.last.cls``)."""
        result, p = parse(frame)
        if p is None:
            return result, None, False
        proto, saddr, sport, daddr, dport, flags, payload = p
        key = (proto,) + (((saddr, sport), (daddr, dport)) if (saddr, sport) <= (daddr, dport)
                          else ((daddr, dport), (saddr, sport)))
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = _fresh(proto, dport, now, (saddr, sport))
            self.counters["new"] += 1
        elif now - f.last_ns > TIMEOUT_NS:
            if f.cls != NO_CLASS:
                self.class_flows[f.cls] -= 1
            f = self.flows[key] = _fresh(proto, dport, now, (saddr, sport))
            self.counters["expired"] += 1
        gap, f.last_ns = now - f.last_ns, now
        self.last = f
        if f.state != FINAL and f.packets < PACKETS:
            b, i = f.record, f.packets
            responder = int((saddr, sport) != f.init)
            b[4 + i] = 0x80 | responder << 6 | min(63, len(payload) >> 5)
            if i > 0:
                b[12 + (i >> 1)] |= gap_bucket(gap) << (0 if i & 1 else 4)
            b[3] |= flags
            if payload and not f.payload_seen & (1 << responder):
                f.payload_seen |= 1 << responder
                at = 24 if responder else 16
                head = payload[:PAYLOAD]
                b[at:at + len(head)] = head
            f.packets = i + 1
            if f.packets == PACKETS or flags & (TCP_FIN | TCP_RST):
                f.state = DECIDING
        if f.state == FINAL:
            self.counters["cached"] += 1
            return "classified", bytes(f.record), False
        return "classified", bytes(f.record), True

    def classified(self, cls: int) -> None:
        """The model's class for the packet just stepped (when infer was True)."""
        f = self.last
        if f.cls != cls:
            if f.cls != NO_CLASS:
                self.class_flows[f.cls] -= 1
            self.class_flows[cls] = self.class_flows.get(cls, 0) + 1
            f.cls = cls
        if f.state == DECIDING:
            f.state = FINAL
            self.counters["final"] += 1


def record_bits(record: bytes, n_bits: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(record, np.uint8))[:n_bits]


def run(model, packets, table: FlowTable | None = None):
    """The reference's class of each (time_ns, frame) in order, None where the
    program classifies nothing: what the kernel does, model and table together."""
    from xdpnn.trainer import reference
    table = table or FlowTable()
    out = []
    for now, frame in packets:
        result, rec, infer = table.step(now, frame)
        if rec is None:
            out.append((result, None))
        elif infer:
            cls = int(reference.predict(model, record_bits(rec, model.sizes[0])[None, :])[0])
            table.classified(cls)
            out.append((result, cls))
        else:
            out.append((result, table.last.cls))
    return out
