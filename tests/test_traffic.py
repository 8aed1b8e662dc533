"""The traffic generators, each confirmed by a receiver's counter: a bounded
count sent is exactly the count received.

    gen [g0] <-> [d0] dut      (traffic/topology.py; d0 counts)
"""
import itertools
import os
from contextlib import contextmanager

import pytest

from xdpnn.traffic import packets

pytestmark = pytest.mark.netns
_ids = itertools.count()
PORT = 9595


@contextmanager
def receiver(drop: bool):
    """A fresh topology with a counting program on d0, the generator's peer."""
    from xdpnn.traffic.sink import Sink
    from xdpnn.traffic.topology import Topology
    with Topology(f"xtr{os.getpid() % 10000}-{next(_ids)}") as t, \
            Sink(t.dut, "d0", drop=drop) as sink:
        yield t, sink


def test_live_frames_cycle_the_inputs_in_order():
    from xdpnn.traffic.livegen import LiveGen, random_payloads
    from xdpnn.traffic.sender import Capture
    payloads = random_payloads(98, seed=3, n=64)
    with receiver(drop=False) as (t, sink), Capture(t.dut, "d0") as cap, \
            LiveGen(t.gen, "g0", payloads, PORT) as gen:
        assert gen.send(23).frames == 23
        got = cap.collect(23)
        assert sink.counts()[0] == 23
    assert got == [packets.request(p, PORT, udp_checksum=False) for p in payloads[:23]]


def test_live_frames_send_an_exact_count_at_millions_of_frames_per_second():
    from xdpnn.traffic.livegen import LiveGen, random_payloads
    with receiver(drop=True) as (t, sink), \
            LiveGen(t.gen, "g0", random_payloads(32, n=1024), PORT) as gen:
        sent = gen.send(200_003)
        assert sent.frames == 200_003 and sink.counts()[0] == 200_003
        assert sent.pps > 100_000  # millions on an idle machine; tests share the CPUs
        # The time bound stops it early, between runs of the program.
        assert gen.send(1 << 40, max_seconds=0.05).seconds < 2


def test_scapy_sender_sends_an_exact_count():
    from xdpnn.traffic.sender import send_frames
    frames = [packets.request(bytes([i]) * 32, PORT) for i in range(23)]
    with receiver(drop=True) as (t, sink):
        assert send_frames(t.gen, "g0", frames) == 23
        assert sink.counts() == (23, sum(len(f) for f in frames))


def test_pktgen_sends_an_exact_count():
    from xdpnn.traffic import pktgen
    with receiver(drop=True) as (t, sink):
        reason = pktgen.unavailable_reason(t.gen)
        if reason:
            pytest.skip(reason)
        sent = pktgen.send(t.gen, "g0", 23, payload_bytes=32, port=PORT, max_seconds=10)
        assert sent.frames == 23 and sink.counts()[0] == 23


def test_pcap_round_trip(tmp_path):
    frames = [f for _, f, _ in packets.crafted_cases(PORT, 32) if len(f) >= 14]
    packets.write_pcap(str(tmp_path / "cases.pcap"), frames)
    assert packets.read_pcap(str(tmp_path / "cases.pcap")) == frames


def test_pcaps_keep_every_byte_of_frames_scapy_would_rewrite(tmp_path):
    """IGMP without options: scapy, re-serialising it, inserts a router-alert
    option without fixing IHL and lengths.  Frames must come back as sent."""
    eth = packets.mac_bytes(packets.DST_MAC) + packets.mac_bytes(packets.SRC_MAC) + b"\x08\x00"
    ip = bytes.fromhex("4500001c00000000010200" "00c6120001e0000016")  # proto 2, no options
    igmp = bytes.fromhex("16000000e0000016")  # a v2 membership report
    frames = [eth + ip + igmp, bytes(14), b"\xff" * 1514]
    packets.write_pcap(str(tmp_path / "x.pcap"), frames)
    assert packets.read_pcap(str(tmp_path / "x.pcap")) == frames


def test_raw_ip_captures_get_an_ethernet_header_and_other_link_types_are_refused(tmp_path):
    from scapy.utils import RawPcapWriter
    ip4 = packets.request(bytes(32), PORT)[14:]
    ip6 = bytes([0x60]) + bytes(39)

    def capture(name, linktype, frames):
        w = RawPcapWriter(str(tmp_path / name), linktype=linktype)
        for f in frames:
            w.write(f)
        w.close()
        return str(tmp_path / name)

    eth = packets.mac_bytes(packets.DST_MAC) + packets.mac_bytes(packets.SRC_MAC)
    assert packets.read_pcap(capture("raw.pcap", 101, [ip4, ip6])) == \
        [eth + b"\x08\x00" + ip4, eth + b"\x86\xdd" + ip6]
    assert packets.read_pcap(capture("raw.pcap", 101, [ip4]))[0] == \
        packets.request(bytes(32), PORT)
    cooked = bytes(14) + b"\x08\x00" + ip4  # Linux cooked capture (tcpdump -i any)
    assert packets.read_pcap(capture("sll.pcap", 113, [cooked])) == [eth + b"\x08\x00" + ip4]
    with pytest.raises(ValueError, match="link type 105"):
        packets.read_pcap(capture("wifi.pcap", 105, [ip4]))
    with pytest.raises(ValueError, match="IP version 0"):
        packets.read_pcap(capture("bad.pcap", 101, [bytes(20)]))
