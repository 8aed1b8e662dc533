"""From a frame to the model's input bits: the Python twin of bpf/parse.h.

``model_input`` returns what the XDP program does for a frame: an input
result (why it is or is not classified) and, when it is, the input bits.
Training on captured traffic and the tests use this, so any difference
from the kernel shows up as a failing test, not as a silently worse model.
The policy is documented in docs/datapath.md.
"""
from __future__ import annotations

import struct

import numpy as np

# enum nn_input_result and the record's sizes, read from bpf/xdpnn_shared.h.
from xdpnn.bpf.shared import FEATURE_BYTES, FEATURE_PAYLOAD, INPUT_RESULTS  # noqa: F401
ETH_LEN = 14
IPPROTO_TCP, IPPROTO_UDP = 6, 17


def _ipv4(frame: bytes):
    """Ethernet + IPv4 checks; returns (result, ip header fields or None)."""
    if len(frame) < ETH_LEN:
        return "truncated", None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype in (0x8100, 0x88A8):
        return "vlan", None
    if ethertype == 0x86DD:
        return "ipv6", None
    if ethertype != 0x0800:
        return "non_ip", None
    ip = frame[ETH_LEN:]
    if len(ip) < 20:
        return "truncated", None
    version, ihl = ip[0] >> 4, ip[0] & 0xF
    if version != 4 or ihl < 5:
        return "malformed", None
    tot_len, frag = struct.unpack_from("!H2xH", ip, 2)
    if tot_len < ihl * 4:
        return "malformed", None
    if tot_len > len(ip):
        return "truncated", None
    if frag & 0x3FFF:
        return "fragment", None
    return "classified", {"ip": ip, "ihl": ihl * 4, "tot_len": tot_len,
                          "l4": ip[ihl * 4:tot_len], "proto": ip[9]}


def payload_input(frame: bytes, n_bits: int, port: int):
    """Payload mode: the first bytes of the payload of a UDP datagram to port."""
    result, h = _ipv4(frame)
    if result != "classified":
        return result, None
    if h["proto"] != IPPROTO_UDP:
        return "other", None
    l4 = h["l4"]
    if len(l4) < 8:
        return "truncated", None
    dport, udp_len = struct.unpack_from("!HH", l4, 2)
    if dport != port:
        return "other", None
    if udp_len < 8 or udp_len > len(l4):
        return "malformed", None
    n_bytes = (n_bits + 7) // 8
    if udp_len - 8 < n_bytes:
        return "short_payload", None
    return "classified", np.unpackbits(np.frombuffer(l4[8:8 + n_bytes], np.uint8))[:n_bits]


def header_record(frame: bytes):
    """Headers mode: (result, the 32-byte feature record or None).

    Layout (docs/datapath.md): 0 protocol, 1 TTL, 2 TOS, 3 TCP flags,
    4-5 IP total length, 6-7 source port, 8-9 destination port, 10-11 L4
    payload length, 12-13 TCP window, 14 IP header length, 15 L4 header
    length, 16-31 the first 16 L4 payload bytes, zero padded.  Multi-byte
    fields are big endian, as on the wire.
    """
    result, h = _ipv4(frame)
    if result != "classified":
        return result, None
    ip, l4 = h["ip"], h["l4"]
    rec = bytearray(FEATURE_BYTES)
    rec[0], rec[1], rec[2] = h["proto"], ip[8], ip[1]
    rec[4:6] = ip[2:4]
    rec[14] = h["ihl"]
    l4_hdr = 0
    if h["proto"] == IPPROTO_TCP:
        if len(l4) < 20:
            return "truncated", None
        doff = l4[12] >> 4
        if doff < 5:
            return "malformed", None
        l4_hdr = doff * 4
        if l4_hdr > len(l4):
            return "truncated", None
        rec[3] = l4[13]
        rec[6:10] = l4[0:4]
        rec[12:14] = l4[14:16]
    elif h["proto"] == IPPROTO_UDP:
        if len(l4) < 8:
            return "truncated", None
        l4_hdr = 8
        rec[6:10] = l4[0:4]
    payload = l4[l4_hdr:]
    struct.pack_into("!H", rec, 10, len(payload))
    rec[15] = l4_hdr
    head = payload[:FEATURE_PAYLOAD]
    rec[16:16 + len(head)] = head
    return "classified", bytes(rec)


def model_input(frame: bytes, mode: str, n_bits: int, port: int):
    """(input result, bits or None) for a frame, as the XDP program sees it."""
    if mode == "payload":
        return payload_input(frame, n_bits, port)
    result, rec = header_record(frame)
    if rec is None:
        return result, None
    return result, np.unpackbits(np.frombuffer(rec, np.uint8))[:n_bits]
