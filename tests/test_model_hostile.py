"""Hostile model files: each is refused with exit code 3 and one line naming
the file and the problem, in bounded time and memory.

A generator makes each bad file from a valid model by changing one thing: a
header field, an array's dtype or shape, the zip structure, or the kind of
file.  Each case is checked in-process (`load` raises ModelError within
LOAD_SECONDS, allocating at most LOAD_PEAK_BYTES as tracemalloc counts) and
as `xdpnn model show FILE` in a child whose address space is capped at 1 GiB,
so a loader that tried to allocate a bomb's gigabytes would crash instead of
exiting 3.  The case ids start with their category (docs/reliability.md).
"""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from numpy.lib import format as npy

from cli import xdpnn
from xdpnn.trainer.model import (FORMAT, MAX_FILE_BYTES, VERSION, ModelError, load,
                                 random_model)

SHAPE = [20, 6, 5, 3]  # w0 (6, 3), w1 (5, 1), w2 (3, 1), t0 (6,), t1 (5,), out_* (3,)
GiB = 1 << 30
LOAD_SECONDS = 1.0
LOAD_PEAK_BYTES = 4 * MAX_FILE_BYTES
CLI_SECONDS = 10  # includes starting Python on a shared, noisy machine


# --- building files -----------------------------------------------------------

def valid_parts() -> tuple[dict, dict[str, np.ndarray]]:
    """The header and arrays of a valid model, as Model.save writes them."""
    m = random_model(SHAPE, seed=5)
    header = {"format": FORMAT, "version": VERSION, "layers": m.sizes, "input": m.input,
              "classes": m.classes, "provenance": m.provenance}
    arrays = {f"w{l}": np.packbits(w, axis=1) for l, w in enumerate(m.weights)}
    arrays.update({f"t{l}": t.astype("<i8") for l, t in enumerate(m.thresholds)})
    arrays.update(out_scale=m.out_scale.astype("<i8"), out_bias=m.out_bias.astype("<i8"))
    return header, arrays


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    npy.write_array(buf, a, allow_pickle=True)  # object arrays too: the loader must refuse them
    return buf.getvalue()


def forged_npy(descr: str, shape: tuple, data: bytes = b"") -> bytes:
    """A .npy header claiming any dtype and shape, followed by data."""
    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def header_npy(header) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return npy_bytes(np.frombuffer(raw, np.uint8))


def members(header=None, **changes) -> list[tuple[str, bytes]]:
    """(zip name, bytes) of a valid model, with members replaced (bytes) or
    removed (None); header is the JSON header object or raw bytes."""
    h, arrays = valid_parts()
    out = {"header.npy": header_npy(h if header is None else header)}
    out.update({f"{k}.npy": npy_bytes(a) for k, a in arrays.items()})
    for name, data in changes.items():
        if data is None:
            del out[f"{name}.npy"]
        else:
            out[f"{name}.npy"] = data
    return list(out.items())


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def raw_zip(entries: list[tuple[str, bytes, int, int, int]], flags: int = 0) -> bytes:
    """A zip of (name, stored bytes, method, crc, size) exactly as given:
    zipfile would not write a size that lies."""
    body, central = bytearray(), bytearray()
    for name, data, method, crc, size in entries:
        n = name.encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc,
                               len(data), size, len(n), 0, 0, 0, 0, 0, len(body)) + n
        body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, flags, method, 0, 0, crc, len(data),
                            size, len(n), 0) + n + data
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(central), len(body), 0)
    return bytes(body + central + end)


def deflate_bomb(prefix: bytes, mib: int) -> bytes:
    """Raw deflate of prefix then mib MiB of zeros, in about mib KB: one
    flushed block of 1 MiB of zeros, repeated (a full flush makes each block
    independent), then an empty final block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * mib + b"\x03\x00"


def bomb(mib: int, declared: int | None = None) -> bytes:
    """header.npy that inflates to mib MiB; declared: the size its entry claims."""
    prefix = forged_npy("|u1", ((mib << 20),))
    size = declared if declared is not None else len(prefix) + (mib << 20)
    # The CRC of what a reader stopping at the declared size sees (an honest
    # bomb must be refused long before its CRC could be checked).
    crc = zlib.crc32((prefix + bytes(1 << 20))[:size]) if declared is not None else 0
    rest = [(n, zlib.compress(d)[2:-4], zipfile.ZIP_DEFLATED, zlib.crc32(d), len(d))
            for n, d in members()[1:]]
    return raw_zip([("header.npy", deflate_bomb(prefix, mib), zipfile.ZIP_DEFLATED, crc, size)]
                   + rest)


def method(compress_type: int, flags: int = 0) -> bytes:
    entries = [(n, d, zipfile.ZIP_STORED, zlib.crc32(d), len(d)) for n, d in members()]
    name, data, _, crc, size = entries[1]
    entries[1] = (name, data, compress_type, crc, size)
    return raw_zip(entries, flags)


# --- the cases ------------------------------------------------------------------

@dataclass
class Case:
    id: str                       # category-what
    make: Callable                # tmp_path -> path
    detail: str                   # what the error line must name


CASES: list[Case] = []


def file_case(id_: str, detail: str, data: Callable[[], bytes]) -> None:
    def make(tmp_path):
        path = tmp_path / "hostile.npz"
        path.write_bytes(data())
        return path
    CASES.append(Case(id_, make, detail))


def header_case(what: str, field: str, change: Callable[[dict], object]) -> None:
    """A header whose field is changed: change returns the new header (or
    edits it in place and returns None)."""
    def data():
        h, _ = valid_parts()
        new = change(h)
        return zip_of(members(h if new is None else new))
    file_case(f"header-{what}", f"field '{field}", data)  # 'layers' or 'layers[0] (inputs)'


def raw_header_case(what: str, raw: bytes) -> None:
    file_case(f"header-{what}", "field 'header'", lambda: zip_of(members(raw)))


def _set(key, value):
    return lambda h: h.update({key: value})


def _input(value):
    return lambda h: h.update(input=value)


def _without(key):
    def change(h):
        del h[key]
    return change


for what, v in [("missing", None), ("other", "onnx"), ("int", 1), ("list", [FORMAT])]:
    header_case(f"format-{what}", "format", _without("format") if v is None else _set("format", v))
for what, v in [("missing", None), ("bool", True), ("float", 1.0), ("string", "1"), ("3", 3),
                ("null", "null"), ("0", 0)]:
    header_case(f"version-{what}", "version",
                _without("version") if v is None else _set("version", None if v == "null" else v))
for what, v in [("missing", None), ("string", "20-6-5-3"), ("bool", [20, 6, True, 3]),
                ("float", [20.0, 6, 5, 3]), ("negative", [20, -6, 5, 3]),
                ("nested", [[20], 6, 5, 3]), ("huge int", [10**30, 6, 5, 3]),
                ("too many", [8] * 20000), ("too wide", [2000, 6, 5, 3])]:
    header_case(f"layers-{what}", "layers", _without("layers") if v is None else _set("layers", v))
for what, field, v in [
        ("missing", "input.mode", None), ("null", "input.mode", "null"),
        ("string", "input.mode", "payload"), ("list", "input.mode", []),
        ("mode int", "input.mode", {"mode": 1}), ("mode missing", "input.mode", {"port": 9595}),
        ("mode unknown", "input.mode", {"mode": "flows"}),
        ("port bool", "input.port", {"mode": "payload", "port": True}),
        ("port float", "input.port", {"mode": "payload", "port": 9595.0}),
        ("port string", "input.port", {"mode": "payload", "port": "9595"}),
        ("port 0", "input.port", {"mode": "payload", "port": 0}),
        ("port negative", "input.port", {"mode": "payload", "port": -1}),
        ("port list", "input.port", {"mode": "payload", "port": [9595]}),
        ("headers-mode port string", "input.port", {"mode": "headers", "port": "x"})]:
    header_case(f"input-{what}", field,
                _without("input") if v is None else _input(None if v == "null" else v))
for what, v in [("null", None), ("string", "abc"), ("ints", [1, 2, 3]), ("too few", ["a", "b"]),
                ("empty", []), ("duplicate", ["a", "a", "b"]), ("unprintable", ["a", "b", "\n"]),
                ("null name", ["a", "b", None]), ("empty name", ["a", "b", ""])]:
    header_case(f"classes-{what}", "classes", _set("classes", v))
for what, v in [("list", []), ("string", "x"), ("null", None), ("number", 1)]:
    header_case(f"provenance-{what}", "provenance", _set("provenance", v))

GOOD_HEADER = json.dumps(valid_parts()[0])
for what, token in [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
                    ("1e999", "1e999"), ("nested NaN", '{"a": [1, NaN]}')]:
    raw_header_case(f"provenance-{what}",
                    GOOD_HEADER.replace('"provenance": {', f'"provenance": {{"x": {token}, ', 1)
                    .encode())
raw_header_case("json-NaN version", GOOD_HEADER.replace('"version": 1', '"version": NaN').encode())
raw_header_case("json-duplicate key", GOOD_HEADER.replace('"version": 1',
                                                          '"version": 2, "version": 1').encode())
raw_header_case("json-not utf-8", b'{"format": "\xff"}')
raw_header_case("json-deep nesting", b"[" * 100000 + b"]" * 100000)
raw_header_case("json-5000 digits", b'{"version": ' + b"9" * 5000 + b"}")
raw_header_case("json-trailing data", GOOD_HEADER.encode() + b" {}")
raw_header_case("json-empty", b"")
raw_header_case("json-list", b"[1, 2, 3]")
file_case("header-array int16", "field 'header'",
          lambda: zip_of([("header.npy", npy_bytes(np.frombuffer(
              GOOD_HEADER.encode().ljust(2 * len(GOOD_HEADER)), "<i2")))] + members()[1:]))
file_case("header-array 2-D", "field 'header'",
          lambda: zip_of([("header.npy", npy_bytes(np.frombuffer(
              GOOD_HEADER.encode(), np.uint8)[None, :]))] + members()[1:]))
file_case("header-array 300 KB", "field 'header'",
          lambda: zip_of(members(GOOD_HEADER.encode().ljust(300_000))))
file_case("header-array 16 TiB", "field 'header'",
          lambda: zip_of([("header.npy", forged_npy("|u1", (1 << 44,)))] + members()[1:]))

SHAPES = {"w0": (6, 3), "w1": (5, 1), "w2": (3, 1), "t0": (6,), "t1": (5,),
          "out_scale": (3,), "out_bias": (3,)}
DTYPES = ["<f8", "<m8[s]", "|O", ">i8", "<M8[D]", "|b1", "<f2", "<c16", "|S8"]
# Every dtype and shape on one weight and one integer array, the commonest
# on the others: each case costs a child process.
FULL = ("w0", "t0")


for name, shape in SHAPES.items():
    for dt in DTYPES if name in FULL else DTYPES[:4]:
        detail = "holds Python objects" if dt == "|O" else f"field '{name}'"
        file_case(f"dtype-{name} {dt}", detail, lambda name=name, shape=shape, dt=dt: zip_of(
            members(**{name: npy_bytes(np.ones(shape, np.uint8).astype(dt))})))
    more_rows = (shape[0] + 1,) + shape[1:]
    wrong = [("more rows", more_rows), ("extra axis", shape + (1,)), ("scalar", ()),
             ("empty", (0,)), ("flat" if len(shape) > 1 else "row",
                               (int(np.prod(shape)),) if len(shape) > 1 else (1, shape[0]))]
    for what, bad in wrong if name in FULL else wrong[:1]:
        dt = "|u1" if name[0] == "w" else "<i8"
        file_case(f"shape-{name} {what}", f"field '{name}'",
                  lambda name=name, bad=bad, dt=dt: zip_of(members(
                      **{name: npy_bytes(np.zeros(bad, dt))})))
    file_case(f"shape-{name} 16 TiB", f"field '{name}'",
              lambda name=name: zip_of(members(**{name: forged_npy(
                  "|u1" if name[0] == "w" else "<i8", (1 << 22, 1 << 22) if name[0] == "w"
                  else (1 << 41,))})))
    if name not in FULL + ("out_bias",):
        continue
    file_case(f"size-{name} truncated data", f"field '{name}'",
              lambda name=name: zip_of(members(**{name: dict(members())[f"{name}.npy"][:-1]})))
    file_case(f"size-{name} trailing data", f"field '{name}'",
              lambda name=name: zip_of(members(**{name: dict(members())[f"{name}.npy"] + b"x"})))

NOT_A_ZIP = "not an xdpnn model file"
file_case("zip-bomb 3 GiB in 3 MB", "3,221,225,600 bytes uncompressed", lambda: bomb(3072))
file_case("zip-bomb 1 GiB in 1 MB", "field 'header'", lambda: bomb(1024))
file_case("zip-bomb with a forged small size", "field 'header'", lambda: bomb(1024, 200))
file_case("zip-forged ratio", "more than deflate can compress", lambda: raw_zip(
    [(n, zlib.compress(d)[2:-4], zipfile.ZIP_DEFLATED, zlib.crc32(d), 260_000 if i == 0 else len(d))
     for i, (n, d) in enumerate(members())]))
file_case("zip-duplicate w0", "field 'arrays'", lambda: zip_of(members() + [members()[1]]))
file_case("zip-duplicate header", "field 'arrays'",
          lambda: zip_of(members() + [("header.npy", header_npy({"format": FORMAT}))]))
file_case("zip-header not .npy", "is not a .npy array",
          lambda: zip_of([("header.npy", GOOD_HEADER.encode())] + members()[1:]))
file_case("zip-w0 not .npy", "is not a .npy array", lambda: zip_of(members(w0=b"\0" * 24)))
file_case("zip-name without .npy", "field 'arrays'", lambda: zip_of(members() + [("w3", b"")]))
file_case("zip-unknown member", "field 'arrays'",
          lambda: zip_of(members() + [("extra.npy", npy_bytes(np.zeros(3, np.int64)))]))
file_case("zip-missing t1", "field 'arrays'", lambda: zip_of(members(t1=None)))
file_case("zip-missing header", "field 'header'", lambda: zip_of(members()[1:]))
file_case("zip-100 members", "field 'arrays'", lambda: zip_of(
    members() + [(f"x{i}.npy", npy_bytes(np.zeros(1, np.int64))) for i in range(100)]))
file_case("zip-truncated", NOT_A_ZIP, lambda: zip_of(members())[:600])
file_case("zip-central directory cut", NOT_A_ZIP, lambda: zip_of(members())[:-30])
file_case("zip-bzip2 member", "compressed with method 12", lambda: method(zipfile.ZIP_BZIP2))
file_case("zip-encrypted member", "encrypted", lambda: method(zipfile.ZIP_STORED, flags=1))
file_case("zip-npy header 1 MB", "bad .npy header", lambda: zip_of(members(
    w0=npy.MAGIC_PREFIX + b"\x02\x00" + struct.pack("<I", 1 << 20) + b" " * 8000)))
file_case("zip-npy header 8 KB", "bad .npy header", lambda: zip_of(members(
    w0=npy.MAGIC_PREFIX + b"\x02\x00" + struct.pack("<I", 8000) + b" " * 8000)))
file_case("zip-npy version 3", ".npy version", lambda: zip_of(members(
    w0=npy.MAGIC_PREFIX + b"\x03\x00" + dict(members())["w0.npy"][8:])))
file_case("zip-not a zip", NOT_A_ZIP, lambda: b"just some text\n")
file_case("zip-empty file", NOT_A_ZIP, lambda: b"")
file_case("zip-single .npy", "a single .npy array", lambda: npy_bytes(np.zeros(4, np.uint8)))


def kind_case(id_: str, detail: str, make: Callable) -> None:
    CASES.append(Case(id_, make, detail))


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    return tmp_path / "fifo.npz"


def _sparse(tmp_path):
    with open(tmp_path / "sparse.npz", "wb") as f:
        f.truncate(1 << 40)  # 1 TiB of holes: costs nothing to make
    return tmp_path / "sparse.npz"


kind_case("kind-FIFO", "a FIFO, not a regular file", _fifo)
kind_case("kind-directory", "a directory, not a regular file", lambda tmp_path: tmp_path)
kind_case("kind-/dev/zero", "a device, not a regular file", lambda tmp_path: "/dev/zero")
kind_case("kind-/dev/null", "a device, not a regular file", lambda tmp_path: "/dev/null")
kind_case("kind-1 TiB sparse file", f"more than {MAX_FILE_BYTES:,} bytes", _sparse)

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"


# --- the checks -----------------------------------------------------------------

def _hung(signum, frame):
    raise TimeoutError("load() did not return within 10 s")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_load_refuses_within_bounds(tmp_path, case):
    path = case.make(tmp_path)
    old_alarm = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(10)  # a FIFO once made open() wait forever
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ModelError) as exc:
            load(path)
        took = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and case.detail in msg, msg
    assert "\n" not in msg
    assert took < LOAD_SECONDS, (took, msg)
    assert peak < LOAD_PEAK_BYTES, (peak, msg)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_model_show_exits_3_within_bounds(tmp_path, case):
    path = case.make(tmp_path)
    start = time.monotonic()
    r = xdpnn("model", "show", path, memory_limit=GiB, timeout=60)
    took = time.monotonic() - start
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdpnn: model show: load model "), r.stderr
    assert str(path) in lines[0] and case.detail in lines[0], lines[0]
    assert took < CLI_SECONDS, (took, lines[0])


ATTACH_CASES = [c for c in CASES if c.id in (
    "zip-bomb 1 GiB in 1 MB", "shape-w0 16 TiB", "kind-FIFO", "header-provenance-NaN",
    "zip-header not .npy", "header-version-bool")]


@pytest.mark.root
@pytest.mark.parametrize("case", ATTACH_CASES, ids=[c.id for c in ATTACH_CASES])
def test_attach_refuses_and_leaves_no_pin(tmp_path, netns_name, case):
    path = case.make(tmp_path)
    r = xdpnn("-n", netns_name, "attach", "lo", "--model", path, memory_limit=GiB, timeout=60)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert str(path) in r.stderr and case.detail in r.stderr, r.stderr
    assert not os.path.exists(f"/sys/fs/bpf/xdpnn/lo@{netns_name}")


def test_the_valid_base_loads(tmp_path):
    """Every case above changes one thing in this file."""
    path = tmp_path / "good.npz"
    path.write_bytes(zip_of(members()))
    assert load(path).sizes == SHAPE
    assert xdpnn("model", "show", path, memory_limit=GiB).returncode == 0
