"""The kernel's packet generator (/proc/net/pktgen), where the pktgen module
exists (stock distribution kernels, virtual machines); detected at run time.
It sends one fixed request from a port of a namespace, a bounded count, and
is stopped if it overruns its time bound.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from xdpnn.loader.errors import MissingFeatureError
from xdpnn.loader.netns import netns
from xdpnn.traffic import packets
from xdpnn.traffic.livegen import Sent

UNAVAILABLE = "pktgen module not available on this kernel"
# /proc/net follows the process's first thread; thread-self follows setns.
PROC = Path("/proc/thread-self/net/pktgen")


def unavailable_reason(ns: str) -> str | None:
    """None if pktgen can run in ns, else why not (loads the module if it can)."""
    with netns(ns):
        if PROC.is_dir():
            return None
        if shutil.which("modprobe"):
            subprocess.run(["modprobe", "-q", "pktgen"], capture_output=True)
        return None if PROC.is_dir() else UNAVAILABLE


def _write(path: Path, command: str) -> None:
    # One command per write; pgctrl drops the last byte as the newline, so
    # every command ends with one.
    with open(path, "w") as f:
        f.write(command + "\n")


def send(ns: str, iface: str, count: int, payload_bytes: int, port: int,
         max_seconds: float = 30.0) -> Sent:
    """Sends `count` UDP requests to port from ns/iface with pktgen."""
    if count < 1:
        raise ValueError(f"pktgen: count {count}: expected at least 1")
    reason = unavailable_reason(ns)
    if reason:
        raise MissingFeatureError(f"pktgen: {reason}")
    frame_bytes = len(packets.request(bytes(payload_bytes), port))
    with netns(ns):
        thread = PROC / "kpktgend_0"
        _write(thread, "rem_device_all")
        _write(thread, f"add_device {iface}")
        dev = PROC / iface
        for cmd in (f"count {count}", f"pkt_size {frame_bytes + 4}",  # pktgen counts the FCS
                    "delay 0", "clone_skb 0", f"dst {packets.DST_IP}",
                    f"src_min {packets.SRC_IP}", f"src_max {packets.SRC_IP}",
                    f"dst_mac {packets.DST_MAC}", f"udp_dst_min {port}", f"udp_dst_max {port}",
                    f"udp_src_min {packets.SRC_PORT}", f"udp_src_max {packets.SRC_PORT}"):
            _write(dev, cmd)

    def start():
        with netns(ns):
            try:
                _write(PROC / "pgctrl", "start")  # returns when the count is sent
            except OSError:
                pass  # interrupted by "stop"

    started = time.monotonic()
    runner = threading.Thread(target=start, daemon=True)
    runner.start()
    runner.join(max_seconds)
    with netns(ns):
        if runner.is_alive():
            _write(PROC / "pgctrl", "stop")
            runner.join(5)
        seconds = time.monotonic() - started
        text = dev.read_text()
        _write(thread, "rem_device_all")
    sent = re.search(r"pkts-sofar:\s*(\d+)", text)
    return Sent(int(sent.group(1)) if sent else 0, seconds)
