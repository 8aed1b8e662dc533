"""The few BPF system calls the control plane needs beyond compiling, through
libbpf (Debian's libbpf1) and ctypes: pins, map reads and writes, XDP attach
and detach, program info and BPF_PROG_TEST_RUN (which BCC 0.26 lacks).

Every function raises BpfError with the operation, the object and the errno.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
from contextlib import contextmanager
from pathlib import Path

from xdpnn.loader.errors import XdpnnError

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class BpfError(XdpnnError):
    """A BPF system call failed; the message names the operation and object."""
    exit_code = 4

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno


def _load_libbpf():
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfError(0, f"cannot load libbpf ({name}): {e}; install Debian's libbpf1") from None


_lib = None


def lib():
    global _lib
    if _lib is None:
        _lib = _load_libbpf()
        u32p, vp = ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p
        for name, args in {
            "bpf_obj_pin": [ctypes.c_int, ctypes.c_char_p],
            "bpf_obj_get": [ctypes.c_char_p],
            "bpf_map_lookup_elem": [ctypes.c_int, vp, vp],
            "bpf_map_update_elem": [ctypes.c_int, vp, vp, ctypes.c_uint64],
            "bpf_map_lookup_batch": [ctypes.c_int, vp, vp, vp, vp, u32p, vp],
            "bpf_prog_test_run_opts": [ctypes.c_int, vp],
            "bpf_xdp_query_id": [ctypes.c_int, ctypes.c_int, u32p],
            "bpf_obj_get_info_by_fd": [ctypes.c_int, vp, u32p],
            "bpf_prog_get_fd_by_id": [ctypes.c_uint32],
            "bpf_link_create": [ctypes.c_int, ctypes.c_int, ctypes.c_int, vp],
            "bpf_link_detach": [ctypes.c_int],
            "bpf_map_get_fd_by_id": [ctypes.c_uint32],
            "bpf_btf_get_fd_by_id": [ctypes.c_uint32],
            "bpf_map_create": [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                               ctypes.c_uint32, vp],
            "libbpf_num_possible_cpus": [],
        }.items():
            getattr(_lib, name).argtypes = args
            getattr(_lib, name).restype = ctypes.c_int
    return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


def pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def get_pinned(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned object {path}")


# BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH, _PERCPU_CGROUP_STORAGE
PERCPU_MAP_TYPES = {5, 6, 10, 21}


def map_lookup(fd: int, key: int, value_size: int, what: str = "map") -> bytes:
    """The value at key, which must be value_size bytes (for a per-CPU map, all
    CPUs' values): the kernel writes the map's own size, whatever the buffer."""
    info = map_info(fd)
    size = info.value_size
    if info.type in PERCPU_MAP_TYPES:
        size = (size + 7) // 8 * 8 * possible_cpus()
    if size != value_size:
        raise BpfError(errno_mod.EINVAL, f"read {what}: its values are {size} bytes, expected "
                                     f"{value_size} (made by another version of xdpnn?)")
    k = ctypes.c_uint32(key)
    buf = ctypes.create_string_buffer(value_size)
    _check(lib().bpf_map_lookup_elem(fd, ctypes.byref(k), buf), f"read {what}[{key}]")
    return buf.raw


def map_entries(fd: int, key_type, value_type, what: str = "map") -> list:
    """Every (key, value) of a hash map, as ctypes structures of the given
    types (checked against the map's own sizes), read in batches: one
    system call per few thousand entries rather than two per entry."""
    info = map_info(fd)
    if (info.key_size, info.value_size) != (ctypes.sizeof(key_type), ctypes.sizeof(value_type)):
        raise BpfError(errno_mod.EINVAL, f"read {what}: entries of {info.key_size}+"
                       f"{info.value_size} bytes, expected {ctypes.sizeof(key_type)}+"
                       f"{ctypes.sizeof(value_type)} (made by another version of xdpnn?)")
    chunk = max(1, min(info.max_entries, 4096))
    keys, values = (key_type * chunk)(), (value_type * chunk)()
    # The cursor is the kernel's (a bucket number for hash maps); 8 bytes hold it.
    cursor, next_cursor = ctypes.c_uint64(), ctypes.c_uint64()
    out, first = [], True
    while True:
        count = ctypes.c_uint32(chunk)
        ret = lib().bpf_map_lookup_batch(fd, None if first else ctypes.byref(cursor),
                                         ctypes.byref(next_cursor), keys, values,
                                         ctypes.byref(count), None)
        done = ret < 0 and (-ret if ret != -1 else ctypes.get_errno()) == errno_mod.ENOENT
        if ret < 0 and not done:
            _check(ret, f"read {what}")
        out += [(type(keys[i]).from_buffer_copy(keys[i]), type(values[i]).from_buffer_copy(values[i]))
                for i in range(count.value)]
        if done:  # ENOENT: that was the last batch
            return out
        cursor.value, first = next_cursor.value, False


def map_update(fd: int, key: int, value: bytes | ctypes.Structure, what: str = "map") -> None:
    k = ctypes.c_uint32(key)
    buf = ctypes.create_string_buffer(bytes(value), len(bytes(value)))
    _check(lib().bpf_map_update_elem(fd, ctypes.byref(k), buf, 0), f"write {what}[{key}]")


class MapCreateOpts(ctypes.Structure):
    """libbpf's struct bpf_map_create_opts (1.x), up to the fields we set."""
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


def map_create_like(fd: int, name: str) -> int:
    """A new, empty map of the same type, sizes, flags and BTF as map fd (what
    an array of maps requires of the maps put in it: kernels before 6.2 also
    compare what BTF tells of the value, so a copy without it is refused)."""
    info = map_info(fd)
    opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=info.map_flags,
                         btf_key_type_id=info.btf_key_type_id,
                         btf_value_type_id=info.btf_value_type_id)
    btf_fd = _check(lib().bpf_btf_get_fd_by_id(info.btf_id), f"open the BTF of map {name}") \
        if info.btf_id else None
    try:
        opts.btf_fd = btf_fd or 0
        return _check(lib().bpf_map_create(info.type, name.encode(), info.key_size,
                                           info.value_size, info.max_entries,
                                           ctypes.byref(opts)), f"create map {name}")
    finally:
        if btf_fd is not None:
            os.close(btf_fd)


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")


def map_delete(fd: int, key: int, what: str = "map") -> None:
    k = ctypes.c_uint32(key)
    _check(lib().bpf_map_delete_elem(fd, ctypes.byref(k)), f"delete {what}[{key}]")


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, flags: int = 0,
             batch_size: int = 0) -> tuple[int, int, bytes]:
    """BPF_PROG_TEST_RUN: returns (XDP verdict, average ns per run, frame out)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    # Room for a frame the program grew (a reply with scores: up to 552 bytes).
    out_size = 0 if flags & BPF_F_TEST_XDP_LIVE_FRAMES else len(frame) + 1024
    data_out = ctypes.create_string_buffer(max(out_size, 1))
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), repeat=repeat, flags=flags,
                       batch_size=batch_size, data_size_in=len(frame),
                       data_in=ctypes.cast(data_in, ctypes.c_void_p))
    if out_size:
        opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
        opts.data_size_out = out_size
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, opts.duration, data_out.raw[:opts.data_size_out]


BPF_XDP = 37  # enum bpf_attach_type


class LinkCreateOpts(ctypes.Structure):
    """struct bpf_link_create_opts, up to the flags: libbpf reads no further than sz."""
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32)]


def xdp_link(ifindex: int, prog_fd: int, mode: str, ifname: str) -> int:
    """Attaches through a BPF link and returns the link's fd.  The link owns
    the attachment wherever the interface goes: detaching it (or dropping
    its last reference, fd or pin) removes the program from that interface,
    even after the interface moved to another network namespace."""
    opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=XDP_MODE_FLAGS[mode])
    ret = lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts))
    if ret == -errno_mod.EBUSY or ret == -errno_mod.EEXIST:
        raise BpfError(errno_mod.EBUSY, f"attach XDP to {ifname}: another XDP program is "
                                        "already attached (see `ip link show`)")
    if ret == -errno_mod.EOPNOTSUPP and mode == "native":
        raise BpfError(errno_mod.EOPNOTSUPP, f"attach XDP to {ifname}: its driver has no native "
                                             "XDP; use --xdp-mode generic")
    return _check(ret, f"attach XDP ({mode}) to {ifname}")


def link_detach(link_fd: int, what: str) -> None:
    _check(lib().bpf_link_detach(link_fd), f"detach {what}")


def link_update(link_fd: int, prog_fd: int, what: str) -> None:
    """Replaces the link's program in one step: the interface never runs
    without one (which on veth would tear down its NAPI and threads)."""
    _check(lib().bpf_link_update(link_fd, prog_fd, None), f"replace the program of {what}")


class LinkInfo(ctypes.Structure):
    """struct bpf_link_info (UAPI) for an XDP link: the union starts at 16."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("xdp_ifindex", ctypes.c_uint32)]


def link_info(fd: int) -> LinkInfo:
    """xdp_ifindex is 0 once the interface is gone (its link is then defunct)."""
    return obj_info(fd, LinkInfo, "link")


def xdp_prog_id(ifindex: int) -> int:
    """Id of the XDP program attached to ifindex (0 if none)."""
    pid = ctypes.c_uint32(0)
    _check(lib().bpf_xdp_query_id(ifindex, 0, ctypes.byref(pid)), f"query XDP on ifindex {ifindex}")
    return pid.value


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (UAPI), up to the fields we read."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
                ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
                ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
                ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64),
                ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64),
                ("verified_insns", ctypes.c_uint32), ("attach_btf_obj_id", ctypes.c_uint32),
                ("attach_btf_id", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    """struct bpf_map_info (UAPI), up to the fields we read."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32)]


def obj_info(fd: int, info_type, what: str):
    info = info_type()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           f"get info of {what}")
    return info


def prog_info(fd: int) -> ProgInfo:
    return obj_info(fd, ProgInfo, "program")


def map_info(fd: int) -> MapInfo:
    return obj_info(fd, MapInfo, "map")


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextmanager
def bpf_stats():
    """kernel.bpf_stats_enabled=1 for the block (run_time_ns and run_cnt in
    prog_info), the previous value restored after it, on errors too."""
    before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(before)


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")
