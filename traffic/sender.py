"""Low-rate functional traffic: frames sent from inside a namespace, and a
capture of what arrives at the other end.  Every loop is bounded in count
and time."""
from __future__ import annotations

import select
import socket
import time

from xdpnn.loader.netns import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def send_frames(ns: str, iface: str, frames: list[bytes], max_seconds: float = 30.0,
                pace: float = 0.0) -> int:
    """Sends each frame once from ns/iface; returns how many were sent."""
    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((iface, 0))
    deadline = time.monotonic() + max_seconds
    sent = 0
    try:
        for frame in frames:
            if time.monotonic() > deadline:
                break
            s.send(frame)
            sent += 1
            if pace:
                time.sleep(pace)
    finally:
        s.close()
    return sent


class Capture:
    """Collects the frames arriving on ns/iface (not the ones it sends)."""

    def __init__(self, ns: str, iface: str):
        with netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
            self.sock.bind((iface, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.frames: list[bytes] = []

    def collect(self, want: int, max_seconds: float = 5.0) -> list[bytes]:
        """Reads until `want` frames arrived or max_seconds passed."""
        deadline = time.monotonic() + max_seconds
        while len(self.frames) < want:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                break
            data, addr = self.sock.recvfrom(65535)
            if addr[2] != PACKET_OUTGOING:
                self.frames.append(data)
        return self.frames

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
