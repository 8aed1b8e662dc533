"""Entering a named network namespace (as `ip -n NAME` does) for one block.

Interface names, ifindexes, DEVMAP entries and XDP attach all resolve in the
caller's network namespace, so the loader enters the target namespace on the
calling thread instead of re-executing itself under `ip netns exec` (which
would also hide the host's bpffs, where the pins live).

pyroute2 has namespace switching of its own, but not for one thread: NetNS
runs its netlink socket in a forked helper process, so nothing of this process
(ifindex lookups, DEVMAP updates, BPF_PROG_RUN) moves; pushns/popns save
/proc/self/ns/net, the main thread's namespace, on one stack for the whole
process (and 0.9 forks to open the target).  With other threads running (the
bench's generator and receivers), a thread would come back to another
thread's namespace, and forking a threaded process is unsafe.  setns(2) on
the calling thread, undone from its own /proc/thread-self, touches no other
thread.  A netlink socket
(pyroute2's IPRoute) opened inside `netns()` stays in that namespace.
"""
from __future__ import annotations

import ctypes
import os
import socket
from contextlib import contextmanager

from xdpnn.loader.errors import AttachError, UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
# The new mount API by number (the same on every architecture): glibc before
# 2.36 has no wrappers for it.
SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_CMD_CREATE = 6

_libc = ctypes.CDLL(None, use_errno=True)


IFNAMSIZ = 16
NAME_MAX = 255


def check_ifname(name: str) -> str:
    """An interface name as the kernel accepts it (dev_valid_name), minus '@',
    which xdpnn's pin folders use as a separator.  Never a path."""
    if not (0 < len(name.encode()) < IFNAMSIZ and name not in (".", "..")
            and not any(c in "/:@" or c.isspace() or not c.isprintable() for c in name)):
        raise UsageError(f"interface name {name!r}: expected 1..{IFNAMSIZ - 1} bytes, not '.' or "
                         "'..', without '/', ':', '@' or whitespace")
    return name


def check_netns_name(name: str) -> str:
    """A network namespace name as `ip netns` accepts it: a file name in /run/netns."""
    if not (0 < len(name.encode()) <= NAME_MAX and name not in (".", "..")
            and "/" not in name and "\0" not in name and name.isprintable()):
        raise UsageError(f"network namespace name {name!r}: expected a name as `ip netns` "
                         "takes it (not '.' or '..', without '/')")
    return name


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise AttachError(f"enter network namespace {what}: {os.strerror(err)}")


@contextmanager
def netns(name: str | None):
    """Runs the block inside network namespace `name` (None: stay here)."""
    if not name:
        yield
        return
    path = os.path.join(NETNS_RUN_DIR, check_netns_name(name))
    try:
        target = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise AttachError(f"network namespace {name} not found ({path})") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target, name)
        try:
            yield
        finally:
            _setns(home, "of this process")
    finally:
        os.close(target)
        os.close(home)


def ifindex(ifname: str, ns: str | None) -> int:
    """The ifindex of ifname in ns (must be called inside ns)."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        where = f" in network namespace {ns}" if ns else ""
        raise AttachError(f"interface {ifname} not found{where}") from None


def write_sysfs_net(ifname: str, attr: str, value: str) -> None:
    """Writes /sys/class/net/<ifname>/<attr> of the calling thread's namespace.

    sysfs shows the devices of the namespace it was mounted from, so this
    opens a sysfs instance here (fsopen/fsmount, Linux 5.2) that is never
    attached anywhere: no mount namespace, no fork, nothing to unmount, and
    it is gone when its file descriptor is closed.
    """
    path = f"class/net/{check_ifname(ifname)}/{attr}"
    fs = _libc.syscall(SYS_FSOPEN, b"sysfs", FSOPEN_CLOEXEC)
    mnt = -1
    try:
        if fs < 0 or _libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0) != 0:
            raise AttachError(f"open sysfs for {ifname}: {os.strerror(ctypes.get_errno())}")
        mnt = _libc.syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, 0)
        if mnt < 0:
            raise AttachError(f"open sysfs for {ifname}: {os.strerror(ctypes.get_errno())}")
        fd = os.open(path, os.O_WRONLY, dir_fd=mnt)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise AttachError(f"write {value} to /sys/{path}: {e.strerror}") from None
    finally:
        for fd in (mnt, fs):
            if fd >= 0:
                os.close(fd)
