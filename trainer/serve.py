"""What the XDP program does with a frame in serving mode (attach --serve):
the Python twin of bpf/serve.h, which the tests hold byte for byte against
the kernel's output.  The protocol: docs/serving.md.

The reply is built from scratch here, with checksums computed over the
whole reply (the kernel sums the same bytes with bpf_csum_diff), so the
two are written independently of each other.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from xdpnn.bpf.shared import SERVE_STATUS, SRV
from xdpnn.trainer import features, reference
from xdpnn.trainer.model import Model

ETH_LEN, IP4_LEN, IP6_LEN, UDP_LEN = 14, 20, 40, 8
HDR = SRV["hdr_bytes"]
DROPPED = ("short_header", "not_request")  # statuses never sent


@dataclass
class Outcome:
    result: str             # input result (features.INPUT_RESULTS)
    verdict: str            # XDP action: pass (the default path without a peer), tx, drop
    frame: bytes            # the frame the program leaves: the reply for tx
    status: str | None      # serving status, for datagrams to the port with a payload
    counters: int | None    # the nn_serve entry that counts it
    cls: int | None = None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(np.frombuffer(data, ">u2").tolist())
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _l4(frame: bytes):
    """(result, L4 bytes per the IP header, is IPv6) as serve_parse sees them."""
    result, h = features._ipv4(frame)
    if result == "classified":
        return ("other", None, False) if h["proto"] != features.IPPROTO_UDP else \
            ("classified", h["l4"], False)
    if result != "ipv6":
        return result, None, False
    if len(frame) < ETH_LEN + IP6_LEN:
        return "truncated", None, True
    if frame[ETH_LEN] >> 4 != 6:
        return "malformed", None, True
    if frame[ETH_LEN + 6] != features.IPPROTO_UDP:
        return "ipv6", None, True
    plen = struct.unpack_from("!H", frame, ETH_LEN + 4)[0]
    if plen > len(frame) - ETH_LEN - IP6_LEN:
        return "truncated", None, True
    return "classified", frame[ETH_LEN + IP6_LEN:ETH_LEN + IP6_LEN + plen], True


def serve(model: Model, frame: bytes, port: int, added: dict[int, Model] | None = None
          ) -> Outcome:
    """What the program compiled for model with --serve does with frame;
    added: the models added beside it by id (`xdpnn model add`)."""
    result, l4, ip6 = _l4(frame)
    if result == "classified":
        if len(l4) < UDP_LEN:
            result = "truncated"
        elif struct.unpack_from("!H", l4, 2)[0] != port:
            result = "other"
        elif not UDP_LEN <= struct.unpack_from("!H", l4, 4)[0] <= len(l4):
            result = "malformed"
    if result != "classified":
        return Outcome(result, "pass", frame, None, None)
    payload = l4[UDP_LEN:struct.unpack_from("!H", l4, 4)[0]]
    status, counters, cls, scores = request_status({0: model, **(added or {})}, payload)
    result = "classified" if status == "ok" else "request_error"
    if status in DROPPED:
        return Outcome(result, "drop", frame, status, counters)
    return Outcome(result, "tx", reply(frame, l4, ip6, payload[:HDR], status, cls, scores),
                   status, counters, cls)


def request_status(models: dict[int, Model], payload: bytes):
    """(status, nn_serve entry, class, scores or None) of a request's payload,
    answered by models[its model id]."""
    if len(payload) < HDR:
        return "short_header", SRV["models"], None, None
    magic, version, flags, model_id, length = struct.unpack_from("!HBBHH", payload)
    if magic != SRV["magic"]:
        return "bad_magic", SRV["models"], None, None
    if version != SRV["version"]:
        return "bad_version", SRV["models"], None, None
    if flags & SRV["f_reply"]:
        return "not_request", SRV["models"], None, None
    counters = min(model_id, SRV["models"])
    if model_id not in models:
        return "unknown_model", counters, None, None
    model = models[model_id]
    n_bytes = (model.sizes[0] + 7) // 8
    if length < n_bytes or len(payload) - HDR < length:
        return "short_input", counters, None, None
    bits = reference.bits_from_bytes(payload[HDR:HDR + n_bytes], model.sizes[0])
    s = reference.scores(model, bits[None, :])[0]
    return "ok", counters, int(np.argmax(s)), (s if flags & SRV["f_scores"] else None)


def reply_body(hdr: bytes, status: str, cls: int | None, scores) -> bytes:
    """The reply's UDP payload: the request header, made a reply, then the body."""
    n = 0 if scores is None else len(scores)
    body = struct.pack("!BBH", SERVE_STATUS.index(status),
                       SRV["no_class"] if cls is None else cls, n)
    body += b"".join(struct.pack("!q", int(v)) for v in ([] if scores is None else scores))
    flags = (hdr[SRV["off_flags"]] & SRV["f_scores"]) | SRV["f_reply"]
    head = struct.pack("!HBB", SRV["magic"], SRV["version"], flags) + hdr[4:6] + \
        struct.pack("!H", len(body)) + hdr[8:16]
    return head + body


def reply(frame: bytes, l4: bytes, ip6: bool, hdr: bytes, status: str, cls, scores) -> bytes:
    """The reply frame to a request frame: addresses and ports swapped."""
    body = reply_body(hdr, status, cls, scores)
    udp_len = UDP_LEN + len(body)
    eth = frame[6:12] + frame[0:6] + frame[12:14]
    if ip6:
        src, dst = frame[ETH_LEN + 24:ETH_LEN + 40], frame[ETH_LEN + 8:ETH_LEN + 24]
        ip = frame[ETH_LEN:ETH_LEN + 4] + struct.pack("!HBB", udp_len, 17, SRV["ttl"]) + src + dst
        pseudo = src + dst + struct.pack("!IxxxB", udp_len, 17)
    else:
        src, dst = frame[ETH_LEN + 16:ETH_LEN + 20], frame[ETH_LEN + 12:ETH_LEN + 16]
        ip = struct.pack("!BBH2sHBBH", 0x45, frame[ETH_LEN + 1], IP4_LEN + udp_len,
                         frame[ETH_LEN + 4:ETH_LEN + 6], 0, SRV["ttl"], 17, 0) + src + dst
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        pseudo = src + dst + struct.pack("!xBH", 17, udp_len)
    udp = l4[2:4] + l4[0:2] + struct.pack("!HH", udp_len, 0) + body
    check = checksum(pseudo + udp) or 0xFFFF
    return eth + ip + udp[:6] + struct.pack("!H", check) + udp[8:]
