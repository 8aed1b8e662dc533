"""A labeled traffic set for headers-mode models, built with Scapy.

Seven classes of frames with the header and payload structure of real
applications: DNS queries, NTP client requests, HTTP requests, TLS
ClientHellos, SSH banners, QUIC Initial packets, and other traffic
(TCP segments, UDP datagrams and ICMP to random ports).  Addresses vary over
198.18.0.0/15 only; ports, lengths, TTLs, TCP windows and options vary the
way client stacks make them vary.  The same seed gives the same frames.

    python -m xdpnn.traffic.dataset DIR [--per-class N] [--seed S]

writes one pcap per class (DIR/<class>.pcap), the layout `xdpnn train
--data pcaps:DIR` reads; `--data traffic` generates the same set in memory.
"""
from __future__ import annotations

import argparse
import logging
import struct
from pathlib import Path

import numpy as np

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import DNS, DNSQR, ICMP, IP, TCP, UDP, Ether, Raw, raw  # noqa: E402

from xdpnn.traffic import packets  # noqa: E402
from xdpnn.traffic.packets import DST_MAC, SRC_MAC  # noqa: E402

CLASSES = ("dns", "ntp", "http", "tls", "ssh", "quic", "other")
DEFAULT_PER_CLASS = 300

NAMES = ("example", "mail", "cdn", "api", "static", "login", "update", "img", "search", "news")
ZONES = ("com", "net", "org", "io", "de", "example")
HTTP_PATHS = ("/", "/index.html", "/api/v1/items", "/login", "/static/app.js", "/favicon.ico",
              "/search?q=xdp", "/images/logo.png")
SSH_BANNERS = (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n",
               b"SSH-2.0-PuTTY_Release_0.78\r\n", b"SSH-2.0-libssh_0.10.4\r\n",
               b"SSH-2.0-dropbear_2022.83\r\n", b"SSH-2.0-Go\r\n")


def _addr(rng) -> str:
    """An address in 198.18.0.0/15 (RFC 2544), the only range this project uses."""
    n = int(rng.integers(1, 2 ** 17 - 1))
    return f"198.{18 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def _ip(rng) -> IP:
    # Initial TTLs of common stacks (64 Linux, 128 Windows, 255 network gear)
    # minus a few hops.
    ttl = int(rng.choice([64, 128, 255])) - int(rng.integers(0, 12))
    return IP(src=_addr(rng), dst=_addr(rng), ttl=ttl, id=int(rng.integers(0, 65536)),
              tos=int(rng.choice([0, 0, 0, 0x10, 0x28, 0xb8])), flags="DF" if rng.random() < 0.7
              else 0)


def _sport(rng) -> int:
    return int(rng.integers(1024, 65536))


def _tcp(rng, dport: int, flags: str = "PA") -> TCP:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (int(rng.integers(0, 2 ** 32)), 0))] \
        if rng.random() < 0.6 else []
    return TCP(sport=_sport(rng), dport=dport, flags=flags, seq=int(rng.integers(0, 2 ** 32)),
               ack=int(rng.integers(0, 2 ** 32)), window=int(rng.choice([502, 501, 2048, 8192,
                                                                          64240, 65535])),
               options=opts)


def _hostname(rng) -> str:
    labels = [str(rng.choice(NAMES)) for _ in range(int(rng.integers(1, 3)))]
    return ".".join(labels + [f"site{int(rng.integers(0, 1000))}", str(rng.choice(ZONES))])


def dns(rng) -> bytes:
    qtype = str(rng.choice(["A", "AAAA", "MX", "TXT", "HTTPS"]))
    q = DNS(id=int(rng.integers(0, 65536)), rd=1, qd=DNSQR(qname=_hostname(rng), qtype=qtype))
    return _ip(rng) / UDP(sport=_sport(rng), dport=53) / q


def ntp(rng) -> bytes:
    # NTPv3/v4 client mode (LI 0, VN 3 or 4, mode 3), 48 bytes, transmit timestamp set.
    first = (int(rng.choice([3, 4])) << 3) | 3
    body = struct.pack("!BBbb11I", first, 0, int(rng.integers(4, 11)), -int(rng.integers(6, 25)),
                       *([0] * 9), int(rng.integers(0xE0000000, 2 ** 32)),
                       int(rng.integers(0, 2 ** 32)))
    return _ip(rng) / UDP(sport=int(rng.choice([123, _sport(rng)])), dport=123) / Raw(body)


def http(rng) -> bytes:
    method = str(rng.choice(["GET", "GET", "GET", "POST", "HEAD"]))
    req = (f"{method} {rng.choice(HTTP_PATHS)} HTTP/1.1\r\nHost: {_hostname(rng)}\r\n"
           f"User-Agent: {rng.choice(['curl/7.88.1', 'Mozilla/5.0', 'python-requests/2.31'])}"
           "\r\nAccept: */*\r\n\r\n")
    return _ip(rng) / _tcp(rng, int(rng.choice([80, 80, 8080, 8000]))) / Raw(req.encode())


def tls(rng) -> bytes:
    """A ClientHello record: random, session id, cipher suites, SNI extension."""
    sni = _hostname(rng).encode()
    suites = rng.choice([0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9],
                        int(rng.integers(3, 9)), replace=False)
    ext_sni = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    ext_versions = struct.pack("!HHBHH", 43, 5, 4, 0x0304, 0x0303)
    exts = ext_sni + ext_versions
    hello = (struct.pack("!H", 0x0303) + rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
             + b"\x20" + rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
             + struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
             + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    record = b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake
    return _ip(rng) / _tcp(rng, int(rng.choice([443, 443, 8443]))) / Raw(record)


def ssh(rng) -> bytes:
    return _ip(rng) / _tcp(rng, 22) / Raw(SSH_BANNERS[int(rng.integers(0, len(SSH_BANNERS)))])


def quic(rng) -> bytes:
    """A QUIC v1 Initial: long header, version 1, connection ids, token length
    0, then protected bytes (random here), padded to at least 1200 bytes."""
    dcid = rng.integers(0, 256, int(rng.choice([8, 8, 16])), dtype=np.uint8).tobytes()
    scid = rng.integers(0, 256, int(rng.choice([0, 8])), dtype=np.uint8).tobytes()
    size = int(rng.integers(1200, 1253))
    head = (bytes([0xC0 | int(rng.integers(0, 4))]) + struct.pack("!I", 1) + bytes([len(dcid)])
            + dcid + bytes([len(scid)]) + scid + b"\x00")
    rest = size - len(head) - 2
    body = head + struct.pack("!H", 0x4000 | rest) + rng.integers(0, 256, rest,
                                                                  dtype=np.uint8).tobytes()
    return _ip(rng) / UDP(sport=_sport(rng), dport=443) / Raw(body)


def other(rng) -> bytes:
    """Other traffic: TCP handshakes, acks and data, UDP and ICMP; half of it
    to the same well-known ports as the application classes (the rest of
    those connections), so a port alone does not give the class away."""
    kind = int(rng.integers(0, 4))
    payload = Raw(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
    dport = int(rng.choice([22, 53, 80, 123, 443])) if rng.random() < 0.5 else _sport(rng)
    if kind == 0:
        flags = str(rng.choice(["S", "SA", "A", "FA", "R"]))
        return _ip(rng) / _tcp(rng, dport, flags)
    if kind == 1:
        return _ip(rng) / _tcp(rng, dport, "PA") / payload
    if kind == 2:
        return _ip(rng) / UDP(sport=_sport(rng), dport=dport) / payload
    return _ip(rng) / ICMP(type=int(rng.choice([0, 8, 3, 11])), id=int(rng.integers(0, 65536))) \
        / payload


BUILDERS = {"dns": dns, "ntp": ntp, "http": http, "tls": tls, "ssh": ssh, "quic": quic,
            "other": other}


def generate(per_class: int = DEFAULT_PER_CLASS, seed: int = 0) -> dict[str, list[bytes]]:
    """{class: [frames]}, per_class frames each, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return {name: [raw(Ether(src=SRC_MAC, dst=DST_MAC) / BUILDERS[name](rng))
                   for _ in range(per_class)] for name in CLASSES}


def write_pcaps(directory: Path, per_class: int = DEFAULT_PER_CLASS, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frames in generate(per_class, seed).items():
        path = directory / f"{name}.pcap"
        packets.write_pcap(str(path), frames)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write the labeled traffic set, one pcap per class")
    p.add_argument("directory", type=Path)
    p.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path in write_pcaps(args.directory, args.per_class, args.seed):
        print(path)


if __name__ == "__main__":
    main()
