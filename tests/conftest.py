"""Shared setup for the test tiers.

Tier 1 (no mark) is pure Python.  Tier 2 (``@pytest.mark.root``) loads BPF
programs and runs them with BPF_PROG_TEST_RUN; it is skipped, never failed,
when the tests do not run as root.  Nothing is skipped because something is
not set up: a missing tool or kernel feature is a failure.
"""
from __future__ import annotations

import os
import uuid

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("root") or item.get_closest_marker("netns"):
            item.add_marker(skip)


@pytest.fixture
def build():
    """compile.build(), with every program it made closed at teardown."""
    from xdpnn.loader import compile

    progs = []

    def _build(model, record_input=False):
        prog = compile.build(model, record_input=record_input)
        progs.append(prog)
        return prog

    yield _build
    for prog in progs:
        prog.close()


@pytest.fixture
def netns_name():
    """A fresh, empty network namespace (prefix xh1-), deleted at teardown."""
    import pyroute2.netns

    name = f"xh1-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pyroute2.netns.create(name)
    try:
        yield name
    finally:
        pyroute2.netns.remove(name)


@pytest.fixture
def veth_pair(netns_name):
    """xv0 <-> xv1, both ends in the test's own namespace; returns its name."""
    from pyroute2 import IPRoute

    from xdpnn.loader.netns import netns
    with netns(netns_name), IPRoute() as ipr:
        ipr.link("add", ifname="xv0", kind="veth", peer="xv1")
    return netns_name
