"""Links, namespaces and sysfs through netlink and system calls, no `ip`:
names checked before they become paths."""
from __future__ import annotations

import pytest

from xdpnn.loader.errors import UsageError
from xdpnn.loader.netns import check_ifname, check_netns_name, netns


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

