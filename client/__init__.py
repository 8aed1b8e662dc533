"""xdpnn.client: ask a model served from XDP (attach --serve) for classes.

    from xdpnn.client import Client

    with Client("198.18.0.2") as c:                  # port 9595, model id 0
        r = c.infer(b"\\x5a" * 32, scores=True)       # 256 input bits, MSB first
        print(r.status, r.cls, r.scores, r.rtt)      # ok 3 [-12, 40, ...] 4.1e-05

    with Client("2001:2::2", netns="client") as c:   # a socket in a network namespace
        report = c.run([bytes(32)] * 1000, inflight=8, max_seconds=5)
        print(report["received"], report["rtt_us"]["p99"])

The wire format (docs/serving.md) comes from bpf/xdpnn_shared.h through
xdpnn.bpf.shared, like the XDP program's.  Each request carries an id,
which matches its reply; a reply that does not come within `timeout`
counts as lost.
"""
from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from xdpnn.bpf.shared import SERVE_STATUS, SRV

DEFAULT_PORT = 9595
HDR = SRV["hdr_bytes"]
_HEAD = struct.Struct("!HBBHHQ")  # magic, version, flags, model, length, request id
assert _HEAD.size == HDR and SRV["off_id"] == 8  # the layout of xdpnn_shared.h


def encode_request(request_id: int, inputs: bytes, model: int = 0, scores: bool = False,
                   magic: int = SRV["magic"], version: int = SRV["version"],
                   flags: int | None = None, length: int | None = None) -> bytes:
    """A request's UDP payload.  magic, version, flags and length can be
    set to anything, to make malformed requests (tests)."""
    if flags is None:
        flags = SRV["f_scores"] if scores else 0
    return _HEAD.pack(magic, version, flags, model, len(inputs) if length is None else length,
                      request_id) + inputs


@dataclass
class Reply:
    id: int
    model: int
    status: str                # SERVE_STATUS: ok, bad_magic, ...
    cls: int | None
    scores: list[int] | None   # with scores=True: scale * a + bias per class
    rtt: float | None = None   # seconds, when the client timed it


def decode_reply(data: bytes) -> Reply:
    """A reply's UDP payload; ValueError if it is not one."""
    if len(data) < SRV["off_scores"]:
        raise ValueError(f"reply of {len(data)} bytes, shorter than {SRV['off_scores']}")
    magic, version, flags, model, length, rid = _HEAD.unpack_from(data)
    if magic != SRV["magic"] or not flags & SRV["f_reply"]:
        raise ValueError("not an xdpnn reply (magic or reply flag)")
    status, cls, n = struct.unpack_from("!BBH", data, SRV["off_status"])
    if length != len(data) - HDR or length != SRV["off_scores"] - HDR + 8 * n:
        raise ValueError(f"reply length {length} does not match its {len(data)} bytes")
    scores = list(struct.unpack_from(f"!{n}q", data, SRV["off_scores"])) if n else None
    return Reply(rid, model, SERVE_STATUS[status] if status < len(SERVE_STATUS) else str(status),
                 None if cls == SRV["no_class"] else cls, scores)


def percentiles(values: list[float]) -> dict:
    """p50, p90, p99 and max (nearest rank); {} without values."""
    if not values:
        return {}
    v = sorted(values)
    at = {p: v[min(len(v) - 1, max(0, -(-len(v) * p // 100) - 1))] for p in (50, 90, 99)}
    return {"p50": at[50], "p90": at[90], "p99": at[99], "max": v[-1]}


def accuracy(replies: list[Reply | None], labels: list[int]) -> dict:
    """Replies (in sending order, None where lost) scored against the
    labels of the inputs they answer, which cycle if fewer."""
    answered = [(r.cls, labels[i % len(labels)]) for i, r in enumerate(replies)
                if r is not None and r.cls is not None]
    correct = sum(c == label for c, label in answered)
    return {"answered": len(answered), "correct": correct,
            "unanswered": len(replies) - len(answered),
            "accuracy": round(correct / len(answered), 4) if answered else 0.0}


class Client:
    """A UDP socket to one server (address, port), optionally in a network
    namespace (the socket stays there; the process does not)."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, model: int = 0,
                 netns: str | None = None, timeout: float = 1.0):
        self.addr = (str(ipaddress.ip_address(host)), port)
        self.model, self.timeout = model, timeout
        family = socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET
        from xdpnn.loader.netns import netns as entered
        with entered(netns):
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect(self.addr)  # only the server's datagrams come in
        self.sock.setblocking(False)
        self.next_id = int.from_bytes(os.urandom(4), "big") << 24  # unique per client

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, inputs: bytes, scores: bool = False, **fields) -> int:
        """Sends one request; returns its id.  fields: see encode_request."""
        rid, self.next_id = self.next_id, self.next_id + 1
        fields.setdefault("model", self.model)
        self.sock.send(encode_request(rid, inputs, scores=scores, **fields))
        return rid

    def receive(self, wait: float) -> list[Reply]:
        """The replies that arrive within wait seconds (at least one if any)."""
        out = []
        if select.select([self.sock], [], [], max(wait, 0))[0]:
            while True:
                try:
                    data = self.sock.recv(65535)
                except BlockingIOError:
                    break
                try:
                    out.append(decode_reply(data))
                except ValueError:
                    pass  # not ours: the socket is connected, so a stray from the server
        return out

    def infer(self, inputs: bytes, scores: bool = False, **fields) -> Reply:
        """One request and its reply; TimeoutError after self.timeout."""
        sent = time.monotonic()
        rid = self.send(inputs, scores, **fields)
        deadline = sent + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            for r in self.receive(left):
                if r.id == rid:
                    r.rtt = time.monotonic() - sent
                    return r
        raise TimeoutError(f"no reply from {self.addr[0]} port {self.addr[1]} within "
                           f"{self.timeout} s")

    def run(self, inputs: list[bytes], count: int | None = None, rate: float | None = None,
            inflight: int = 1, max_seconds: float = 10.0, scores: bool = False,
            keep: bool = False) -> dict:
        """Sends count requests (default: one per input, cycling through
        inputs), open loop at `rate` per second or closed loop with `inflight`
        outstanding, for at most max_seconds plus one timeout for the last
        replies.  Returns a report; with keep, the replies (in sending
        order, None where lost) under "replies", and "sent_inputs"."""
        count = len(inputs) if count is None else count
        pending: dict[int, tuple[int, float]] = {}  # id -> (index, sent at)
        replies: list[Reply | None] = []
        sent = 0
        start = time.monotonic()
        stop_sending = start + max_seconds
        while True:
            now = time.monotonic()
            if sent < count and now < stop_sending:
                due = sent - int((now - start) * rate) if rate else len(pending) - inflight
                while due < 0 and sent < count:
                    rid = self.send(inputs[sent % len(inputs)], scores)
                    pending[rid] = (sent, time.monotonic())
                    replies.append(None)
                    sent, due = sent + 1, due + 1
            elif not pending:
                break
            for rid in [r for r, (_, t) in pending.items() if now - t > self.timeout]:
                del pending[rid]  # lost: its reply stays None
            if not pending and (sent >= count or now >= stop_sending):
                break
            # Until the next send is due, or the oldest request is lost.
            wait = 1 / rate if rate and sent < count else self.timeout
            if pending:
                wait = min(wait, min(t for _, t in pending.values()) + self.timeout - now)
            for r in self.receive(wait):
                if r.id in pending:
                    index, t = pending.pop(r.id)
                    r.rtt = time.monotonic() - t
                    replies[index] = r
        elapsed = time.monotonic() - start
        got = [r for r in replies if r is not None]
        report = {"server": f"{self.addr[0]} port {self.addr[1]}", "model": self.model,
                  "sent": sent, "received": len(got), "lost": sent - len(got),
                  "seconds": round(elapsed, 3),
                  "replies_per_s": round(len(got) / elapsed, 1) if elapsed else 0.0,
                  "mode": f"open loop, {rate:g}/s" if rate else f"closed loop, {inflight} "
                                                                 "in flight",
                  "status": {}, "classes": {},
                  "rtt_us": {k: round(v * 1e6, 1)
                             for k, v in percentiles([r.rtt for r in got]).items()}}
        for r in got:
            report["status"][r.status] = report["status"].get(r.status, 0) + 1
            if r.cls is not None:
                report["classes"][r.cls] = report["classes"].get(r.cls, 0) + 1
        report["classes"] = dict(sorted(report["classes"].items()))
        if keep:
            report["replies"] = replies
        return report
