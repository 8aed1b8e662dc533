"""Links, namespaces and sysfs through netlink and system calls, no `ip`:
the loader's veth check, the test topology and threaded NAPI.  `ip` appears
here only to check the results independently."""
from __future__ import annotations

import itertools
import json
import os
import subprocess

import pytest

from cli import xdpnn
from xdpnn.loader.errors import UsageError
from xdpnn.loader.netns import check_ifname, check_netns_name, netns, write_sysfs_net
from xdpnn.trainer.model import random_model

root = pytest.mark.root
_ids = itertools.count()


def prefix():
    return f"xnl{os.getpid() % 10000}-{next(_ids)}"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "tab\t", "x" * 16, "é" * 8])
def test_bad_interface_names_are_refused(name):
    with pytest.raises(UsageError, match="interface name"):
        check_ifname(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a\0b"])
def test_bad_netns_names_are_refused(name):
    with pytest.raises(UsageError, match="network namespace name"):
        check_netns_name(name)


def test_netns_refuses_a_path_as_a_name():
    with pytest.raises(UsageError), netns("../../proc/1/ns/net"):
        pass


def test_good_names_pass():
    assert check_ifname("veth-a.1") == "veth-a.1" and check_ifname("x" * 15)
    assert check_netns_name("xdpnn-demo-1-dut") == "xdpnn-demo-1-dut"


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@root
def test_link_of_finds_the_other_end_only_in_the_same_namespace(veth_pair):
    from xdpnn.loader.datapath import link_of
    from xdpnn.traffic.topology import Topology
    with netns(veth_pair):
        assert (link_of("xv0"), link_of("xv1"), link_of("lo"), link_of("nosuch0")) == \
            ("xv1", "xv0", None, None)
    with Topology(prefix()) as t, netns(t.dut):
        assert link_of("d0") is None  # its other end, g0, is in another namespace


@root
def test_attach_refuses_the_two_ends_of_one_veth_pair(veth_pair, tmp_path):
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=4).save(path)
    r = xdpnn("-n", veth_pair, "attach", "xv0", "--peer", "xv1", "--model", path)
    assert r.returncode == 2 and "two ends of one veth pair" in r.stderr, r.stderr


@root
def test_topology_runs_no_ip_command(monkeypatch):
    from xdpnn.traffic import packets
    from xdpnn.traffic.topology import Topology
    run = subprocess.Popen.__init__

    def no_ip(self, argv, *args, **kwargs):  # (pyroute2 may run ldconfig to find libc)
        assert os.path.basename(argv[0]) != "ip", argv
        run(self, argv, *args, **kwargs)

    t = Topology(prefix())
    with monkeypatch.context() as m:
        m.setattr(subprocess.Popen, "__init__", no_ip)
        t.__enter__()
    try:
        names = [t.gen, t.dut, t.sink]
        assert set(names) <= set(ip("netns", "list").split())
        links = {(ns, link["ifname"]): link for ns in names
                 for link in json.loads(ip("-j", "-n", ns, "link", "show"))}
        ends = [(t.gen, "g0"), (t.dut, "d0"), (t.dut, "d1"), (t.sink, "s0")]
        assert sorted(links) == sorted(ends + [(ns, "lo") for ns in names])
        assert all("UP" in links[end]["flags"] for end in ends)
        assert links[(t.gen, "g0")]["address"] == packets.SRC_MAC
        assert links[(t.sink, "s0")]["address"] == packets.DST_MAC
        for ns in names:
            assert ip("netns", "exec", ns, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6",
                      "net.ipv6.conf.default.disable_ipv6").split() == ["1", "1"]
    finally:
        with monkeypatch.context() as m:
            m.setattr(subprocess.Popen, "__init__", no_ip)
            t.__exit__(None, None, None)
    assert not set(names) & set(ip("netns", "list").split())


@root
def test_threaded_napi_is_set_in_each_namespace():
    from xdpnn.traffic.bench import set_threaded_napi
    from xdpnn.traffic.sink import Sink
    from xdpnn.traffic.topology import Topology
    ends = ["g0", "d0", "d1", "s0"]
    with Topology(prefix()) as t:
        spots = [t.gen, t.dut, t.dut, t.sink]
        sinks = [Sink(ns, dev) for ns, dev in zip(spots, ends)]  # threaded NAPI needs XDP on
        try:
            set_threaded_napi(t)
            got = [ip("netns", "exec", ns, "cat", f"/sys/class/net/{dev}/threaded").strip()
                   for ns, dev in zip(spots, ends)]
        finally:
            for s in sinks:
                s.close()
    assert got == ["1"] * 4
    with pytest.raises(UsageError):
        write_sysfs_net("../x", "threaded", "1")
