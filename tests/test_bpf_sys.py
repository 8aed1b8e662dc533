"""The system-call layer on its own (tier 2: BPF, no interface)."""
from __future__ import annotations

import os

import pytest

from xdpnn.loader import bpf_sys
from xdpnn.loader.compile import captured_stderr, import_bcc

pytestmark = pytest.mark.root


def test_map_lookup_refuses_a_value_size_other_than_the_maps():
    """The kernel writes a map's whole value, whatever buffer it is given: a
    pin of another size (another xdpnn version, another tool) must be an
    error, not memory overwritten."""
    BPF = import_bcc()
    with captured_stderr():
        b = BPF(text="BPF_ARRAY(one, u64, 1); BPF_PERCPU_ARRAY(per_cpu, u64, 1);")
    try:
        n = bpf_sys.possible_cpus()
        assert bpf_sys.map_lookup(b["one"].map_fd, 0, 8) == bytes(8)
        assert bpf_sys.map_lookup(b["per_cpu"].map_fd, 0, 8 * n) == bytes(8 * n)
        for name, size, real in (("one", 4, 8), ("one", 16384, 8), ("per_cpu", 8, 8 * n)):
            if size == real:
                continue
            with pytest.raises(bpf_sys.BpfError, match=f"values are {real} bytes, expected {size}"):
                bpf_sys.map_lookup(b[name].map_fd, 0, size, name)
    finally:
        b.cleanup()


def test_an_llvm_fatal_error_is_a_build_error_not_a_dead_process():
    """LLVM aborts the process it runs in on a fatal error (here: a
    variable-length array, which BPF cannot have): compiling in a child
    turns that into the one-line BPF error."""
    from xdpnn.loader.compile import load_in_child
    from xdpnn.loader.errors import BuildError
    text = ("int xdpnn(struct xdp_md *ctx) { int n = (ctx->data_end - ctx->data) & 63; "
            "volatile char buf[n + 1]; buf[0] = 1; return buf[n / 2]; }")
    with pytest.raises(BuildError, match=r"the compiler crashed \(SIGABRT\): LLVM ERROR: "
                                         "Unsupported dynamic stack allocation"):
        load_in_child(text, [], "xdpnn", (), "a test program")
    prog_fd, fds = load_in_child("int xdpnn(struct xdp_md *ctx) { return XDP_PASS; }", [],
                                 "xdpnn", (), "a test program")
    assert bpf_sys.test_run(prog_fd, bytes(64))[0] == 2 and fds == {}  # XDP_PASS
    os.close(prog_fd)
