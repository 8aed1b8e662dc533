"""Packet builders shared by the tests, the demo and the generators: one place
that knows how to build an inference request and each kind of frame the
datapath must survive.  Addresses come from the benchmarking range
198.18.0.0/15 (RFC 2544), which the project's namespaces use exclusively.
"""
from __future__ import annotations

import logging

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, ICMP, IPv6, Raw, raw  # noqa: E402
from scapy.data import DLT_EN10MB  # noqa: E402
from scapy.utils import RawPcapReader, RawPcapWriter  # noqa: E402

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SRC_IP, DST_IP = "198.18.0.1", "198.18.0.2"
SRC_IP6, DST_IP6 = "2001:2::1", "2001:2::2"  # the IPv6 benchmarking range (RFC 5180)
SRC_PORT = 40000


def request(payload: bytes, port: int, src_mac: str = SRC_MAC, dst_mac: str = DST_MAC,
            src_ip: str = SRC_IP, dst_ip: str = DST_IP, sport: int = SRC_PORT,
            udp_checksum: bool = True, ipv6: bool = False) -> bytes:
    """An inference request: a UDP datagram to port whose payload is the input.
    Without udp_checksum the checksum is 0 (none, legal in IPv4): for frames
    whose payload a generator rewrites.  ipv6: from SRC_IP6 to DST_IP6."""
    udp = UDP(sport=sport, dport=port) if udp_checksum else UDP(sport=sport, dport=port, chksum=0)
    ip = IPv6(src=SRC_IP6, dst=DST_IP6) if ipv6 else IP(src=src_ip, dst=dst_ip)
    return raw(Ether(src=src_mac, dst=dst_mac) / ip / udp / Raw(payload))


# Link types read_pcap takes (pcap-linktype numbers), and how far their own
# header reaches and where its EtherType is (None: raw IP, from the version).
LINK_TYPES = {DLT_EN10MB: "Ethernet", 101: "raw IP", 228: "raw IPv4", 229: "raw IPv6",
              113: "Linux cooked", 276: "Linux cooked v2"}
_COOKED = {113: (16, 14), 276: (20, 0)}


def read_pcap(path: str) -> list[bytes]:
    """The frames of a pcap or pcapng file, byte for byte as captured.

    Raw packets are never parsed and re-serialised (scapy would change some,
    such as IGMP with router-alert options).  Raw-IP and Linux cooked
    captures get an Ethernet header (SRC_MAC -> DST_MAC, the packet's
    EtherType), as a veth would deliver them; other link types are refused.
    """
    frames = []
    with RawPcapReader(path) as reader:
        for data, meta in reader:
            linktype = getattr(meta, "linktype", None)
            frames.append(as_ethernet(bytes(data), reader.linktype if linktype is None
                                      else linktype, len(frames)))
    return frames


def read_pcap_times(path: str) -> list[tuple[int, bytes]]:
    """(capture time in ns, frame) of each packet, frames as read_pcap gives them."""
    out = []
    with RawPcapReader(path) as reader:
        for data, meta in reader:
            if hasattr(meta, "tshigh"):  # pcapng: in units of tsresol per second
                ticks = (meta.tshigh << 32) | meta.tslow
                ns = ticks * 10**9 // getattr(meta, "tsresol", 10**6)
            else:
                ns = meta.sec * 10**9 + meta.usec * (1 if getattr(reader, "nano", False)
                                                     else 1000)
            linktype = getattr(meta, "linktype", None)
            out.append((ns, as_ethernet(bytes(data), reader.linktype if linktype is None
                                        else linktype, len(out))))
    return out


def as_ethernet(data: bytes, linktype: int, index: int = 0) -> bytes:
    if linktype == DLT_EN10MB:
        return data
    if linktype not in LINK_TYPES:
        raise ValueError(f"frame {index}: link type {linktype} (xdpnn reads "
                         f"{', '.join(sorted(LINK_TYPES.values()))} captures)")
    if linktype in _COOKED:
        header, at = _COOKED[linktype]
        ethertype, data = data[at:at + 2], data[header:]
    else:
        version = data[0] >> 4 if data else 0
        if version not in (4, 6):
            raise ValueError(f"frame {index}: raw IP packet of IP version {version}")
        ethertype = b"\x08\x00" if version == 4 else b"\x86\xdd"
    return mac_bytes(DST_MAC) + mac_bytes(SRC_MAC) + ethertype + data


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def write_pcap(path: str, frames: list[bytes]) -> None:
    """Writes frames, byte for byte, as an Ethernet pcap file."""
    writer = RawPcapWriter(path, linktype=DLT_EN10MB, sync=True)
    try:
        writer.write_header(None)  # a file with no frames is still a pcap file
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()


def crafted_cases(port: int, n_bytes: int) -> list[tuple[str, bytes, str]]:
    """(description, frame, expected input result in payload mode) for every
    kind of frame in the policy of docs/datapath.md."""
    body = bytes((i * 37 + 11) & 0xFF for i in range(n_bytes))
    eth = Ether(src=SRC_MAC, dst=DST_MAC)
    ip = IP(src=SRC_IP, dst=DST_IP)
    good = raw(eth / ip / UDP(sport=SRC_PORT, dport=port) / Raw(body))
    cases = [
        ("valid request", good, "classified"),
        ("valid request, extra payload", raw(eth / ip / UDP(dport=port) / Raw(body + b"xyz")),
         "classified"),
        ("valid request, IP options", raw(eth / IP(src=SRC_IP, dst=DST_IP,
                                                   options=b"\x01\x01\x01\x00") /
                                          UDP(dport=port) / Raw(body)), "classified"),
        ("UDP to another port", raw(eth / ip / UDP(dport=port ^ 1) / Raw(body)), "other"),
        ("TCP to the port", raw(eth / ip / TCP(dport=port) / Raw(body)), "other"),
        ("ICMP echo", raw(eth / ip / ICMP() / Raw(body)), "other"),
        ("ARP request", raw(Ether(src=SRC_MAC, dst="ff:ff:ff:ff:ff:ff") /
                            ARP(psrc=SRC_IP, pdst=DST_IP)), "non_ip"),
        ("IPv6 UDP to the port", raw(eth / IPv6(src="2001:2::1", dst="2001:2::2") /
                                     UDP(dport=port) / Raw(body)), "ipv6"),
        ("VLAN-tagged request", raw(eth / Dot1Q(vlan=7) / ip / UDP(dport=port) / Raw(body)),
         "vlan"),
        ("empty frame", b"", "truncated"),
        ("Ethernet header cut", good[:10], "truncated"),
        ("IPv4 header cut", good[:14 + 12], "truncated"),
        ("UDP header cut", _fix_ip_len(good[:14 + 20 + 4]), "truncated"),
        ("IP total length beyond frame", good[:-1], "truncated"),
        ("IP version 5", _patch(good, 14, 0x55), "malformed"),
        ("IP header length 4", _patch(good, 14, 0x44), "malformed"),
        ("IP total length below header", _set_u16(good, 14 + 2, 19), "malformed"),
        ("UDP length 7", _set_u16(good, 14 + 20 + 4, 7), "malformed"),
        ("UDP length beyond IP", _set_u16(good, 14 + 20 + 4, 8 + n_bytes + 100), "malformed"),
        ("first fragment (MF)", raw(eth / IP(src=SRC_IP, dst=DST_IP, flags="MF") /
                                    UDP(dport=port) / Raw(body)), "fragment"),
        ("later fragment", raw(eth / IP(src=SRC_IP, dst=DST_IP, frag=100, proto=17) /
                               Raw(body)), "fragment"),
        ("payload one byte short", raw(eth / ip / UDP(dport=port) / Raw(body[:-1])),
         "short_payload"),
        ("empty payload", raw(eth / ip / UDP(dport=port)), "short_payload"),
    ]
    return cases


def _patch(frame: bytes, offset: int, value: int) -> bytes:
    return frame[:offset] + bytes([value]) + frame[offset + 1:]


def _set_u16(frame: bytes, offset: int, value: int) -> bytes:
    return frame[:offset] + value.to_bytes(2, "big") + frame[offset + 2:]


def _fix_ip_len(frame: bytes) -> bytes:
    """Sets the IPv4 total length to what the (cut) frame holds."""
    return _set_u16(frame, 14 + 2, len(frame) - 14)


def random_frames(rng, n: int) -> list[bytes]:
    """n IPv4 frames (TCP, UDP, ICMP, other) with random header fields and
    payloads: varied inputs for headers mode."""
    frames = []
    for _ in range(n):
        kind = int(rng.integers(0, 4))
        ip = IP(src=SRC_IP, dst=DST_IP, ttl=int(rng.integers(1, 256)),
                tos=int(rng.integers(0, 256)), id=int(rng.integers(0, 65536)))
        if rng.random() < 0.1:
            ip.options = b"\x01" * 4 * int(rng.integers(1, 4))  # NOPs
        payload = Raw(rng.integers(0, 256, int(rng.integers(0, 41)), dtype="u1").tobytes())
        sport, dport = (int(p) for p in rng.integers(0, 65536, 2))
        if kind == 0:
            l4 = TCP(sport=sport, dport=dport, flags=int(rng.integers(0, 256)),
                     window=int(rng.integers(0, 65536)), seq=int(rng.integers(0, 2**32)))
            if rng.random() < 0.3:
                l4.options = [("MSS", int(rng.integers(500, 1500))), ("NOP", None),
                              ("WScale", int(rng.integers(0, 15)))]
        elif kind == 1:
            l4 = UDP(sport=sport, dport=dport)
        elif kind == 2:
            l4 = ICMP(type=int(rng.integers(0, 20)))
        else:
            ip.proto = int(rng.choice([47, 50, 132]))  # GRE, ESP, SCTP: no L4 parse
            l4 = Raw(b"")
        frames.append(raw(Ether(src=SRC_MAC, dst=DST_MAC) / ip / l4 / payload))
    return frames


def serve_cases(n_bytes: int) -> list[tuple[str, bytes, str]]:
    """(description, UDP payload, expected status) for requests to a served
    model with n_bytes of input (docs/serving.md, "Errors")."""
    from xdpnn.bpf.shared import SRV
    from xdpnn.client import encode_request as req
    body = bytes((i * 37 + 11) & 0xFF for i in range(n_bytes))
    return [
        ("request", req(1, body), "ok"),
        ("request with scores", req(2, body, scores=True), "ok"),
        ("request, extra input bytes", req(3, body + b"xyz"), "ok"),
        ("request, bytes after the input", req(4, body, length=n_bytes) + b"tail", "ok"),
        ("unknown flags", req(5, body, flags=0x7E), "ok"),
        ("bad magic", req(6, body, magic=0x1234), "bad_magic"),
        ("bad magic with scores", req(7, body, magic=0, scores=True), "bad_magic"),
        ("version 2", req(8, body, version=2), "bad_version"),
        ("version 0", req(9, body, version=0), "bad_version"),
        ("model 1", req(10, body, model=1), "unknown_model"),
        (f"model {SRV['models']}", req(11, body, model=SRV["models"]), "unknown_model"),
        ("model 65535", req(12, body, model=65535), "unknown_model"),
        ("input one byte short", req(13, body[:-1]), "short_input"),
        ("no input", req(14, b""), "short_input"),
        ("length beyond the datagram", req(15, body, length=n_bytes + 1), "short_input"),
        ("length short of the model", req(16, body + b"x", length=n_bytes - 1), "short_input"),
        ("a reply", req(17, body, flags=SRV["f_reply"]), "not_request"),
        ("header cut", req(18, body)[:SRV["hdr_bytes"] - 1], "short_header"),
        ("empty payload", b"", "short_header"),
    ]
