"""Labeled data sets, encoded into the input bits the datapath sees.

Every loader returns a ``Dataset``: 0/1 input bits, integer labels, class
names, the input mode (payload or headers) and a JSON description of the
encoding, which goes into the model's provenance so that the same encoding
can be applied to new data later.  docs/training.md documents each source.

Sources (``load(spec)``):
  digits          scikit-learn's bundled 8x8 handwritten digits, thermometer code
                  (or, with input_bits k > 1, one k-bit value per pixel)
  mnist:DIR       MNIST from the standard IDX files in DIR (never downloaded)
  csv:FILE        numeric feature columns and a label column
  traffic         the generated labeled traffic set (traffic/dataset.py), headers mode
  pcaps:DIR       labeled captures, one pcap per class (file stem = class), headers mode
"""
from __future__ import annotations

import csv
import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdpnn.trainer import features

# Digits pixels are 0..16: bit k of a pixel is set iff the pixel exceeds
# DIGITS_LEVELS[k].  Four levels give 64 * 4 = 256 bits (32 payload bytes).
DIGITS_LEVELS = (2, 6, 10, 14)
MNIST_LEVEL = 127  # MNIST pixels are 0..255: one bit per pixel, 784 bits
CSV_MAX_BITS = 1024


class DataError(ValueError):
    """A data source that cannot be read; the message names the file and the problem."""


@dataclass
class Dataset:
    bits: np.ndarray            # (N, n_bits) uint8 0/1; int64 values for multi-bit inputs
    labels: np.ndarray          # (N,) int64 in 0..len(classes)-1
    classes: list[str]
    mode: str                   # "payload" or "headers"
    source: str                 # what load() was given
    encoding: dict              # how raw samples became bits (JSON)
    # A fixed test split that comes with the source (MNIST's t10k files);
    # None means the trainer draws a stratified split.
    test: "Dataset | None" = field(default=None, repr=False)


def load(spec: str, levels: int | None = None, label_column: str | None = None,
         split_seed: int = 0, test_fraction: float = 0.25, input_mode: str | None = None,
         input_bits: int = 1, signed: bool = False) -> Dataset:
    """Reads a source named as in the module docstring; input_bits > 1: one
    k-bit value per input byte (digits only)."""
    kind, _, arg = spec.partition(":")
    if input_bits > 1 or signed:
        if levels is not None:
            raise DataError(f"data source '{spec}': --levels sets thermometer bits; "
                            "multi-bit inputs have none")
        if spec != "digits" or input_bits == 1:
            raise DataError(f"data source '{spec}': multi-bit inputs (--input-bits 2..8, "
                            "--signed) are implemented for digits only")
        return digit_values(input_bits, signed)
    if input_mode == "flow" and kind != "pcaps":
        raise DataError(f"data source '{spec}': flow mode trains on pcaps:DIR only")
    if kind == "digits" and not arg:
        return digits(levels or len(DIGITS_LEVELS))
    if kind == "mnist" and arg:
        return mnist(Path(arg))
    if kind == "csv" and arg:
        # The binarization is fitted on the training part only: the trainer
        # splits with the same seed and fraction, so test rows never shape it.
        return csv_file(Path(arg), levels or 4, label_column, split_seed, test_fraction)
    if kind == "traffic" and not arg:
        from xdpnn.traffic import dataset
        return frames_dataset(dataset.generate(seed=split_seed), "traffic (generated, seed "
                              f"{split_seed})")
    if kind == "pcaps" and arg:
        return pcaps(Path(arg), input_mode or "headers")
    raise DataError(f"data source '{spec}': expected digits, mnist:DIR, csv:FILE, traffic "
                    "or pcaps:DIR")


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """(rest, picked) index arrays: `fraction` of every class picked at random.

    Each class contributes round(fraction * its size) samples (at least one
    when it has two or more), so rare classes appear on both sides.
    """
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1) if len(idx) > 1 else 0
        picked.append(idx[:k])
    picked = np.sort(np.concatenate(picked))
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    return rest, picked


def subset(ds: Dataset, idx: np.ndarray) -> Dataset:
    return Dataset(ds.bits[idx], ds.labels[idx], ds.classes, ds.mode, ds.source, ds.encoding)


def thermometer(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bits (N, columns * levels): bit k of column j is set iff value > cuts[j, k].

    A thermometer code keeps order: a larger value sets a superset of bits,
    so a ±1 dot product sees it as a larger number.
    """
    return (values[:, :, None] > cuts[None, :, :]).reshape(len(values), -1).astype(np.uint8)


# --- payload mode -------------------------------------------------------------

def digits(levels: int = 4) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data source 'digits' needs scikit-learn: pip install "
                        "'xdpnn[train]'") from None
    if not 1 <= levels <= len(DIGITS_LEVELS):
        raise DataError(f"digits: --levels {levels}: expected 1..{len(DIGITS_LEVELS)}")
    d = load_digits()
    # Spread the levels over 0..16 evenly: 4 levels -> cuts 2, 6, 10, 14.
    cuts = [int(16 * (2 * k + 1) / (2 * levels)) for k in range(levels)]
    bits = thermometer(d.data, np.tile(cuts, (64, 1)))
    return Dataset(bits, d.target.astype(np.int64), [str(k) for k in range(10)], "payload",
                   "digits", {"kind": "thermometer", "what": "8x8 pixels 0..16, row-major",
                              "bit": "pixel * levels + k set iff pixel > cuts[k]",
                              "cuts": cuts})


def digit_values(k: int, signed: bool) -> Dataset:
    """Digits as one k-bit value per pixel: the pixel 0..16 scaled to the
    k-bit range, round(pixel * (2^k - 1) / 16), less 2^(k-1) if signed (so
    a signed input is centred on 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data source 'digits' needs scikit-learn: pip install "
                        "'xdpnn[train]'") from None
    d = load_digits()
    encoding = {"kind": "values", "what": "8x8 pixels 0..16, row-major", "bits": k,
                "signed": signed, "value": "round(pixel * (2^bits - 1) / 16)"
                + (" - 2^(bits - 1)" if signed else "")}
    return Dataset(encode_digits(d.data, encoding), d.target.astype(np.int64),
                   [str(c) for c in range(10)], "payload", "digits", encoding)


def encode_digits(pixels: np.ndarray, encoding: dict) -> np.ndarray:
    """Applies a digits model's stored encoding to (N, 64) pixel rows."""
    if encoding.get("kind") == "values":
        k = encoding["bits"]
        v = np.rint(np.asarray(pixels, float) * (2 ** k - 1) / 16).astype(np.int64)
        return v - 2 ** (k - 1) if encoding["signed"] else v
    cuts = np.asarray(encoding["cuts"])
    return thermometer(np.asarray(pixels, float), np.tile(cuts, (pixels.shape[1], 1)))


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file (optionally gzipped): unsigned bytes with `dims` dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 + 4 * dims or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != dims:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {dims} dimensions")
    shape = struct.unpack_from(f">{dims}I", raw, 4)
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), "
                        f"file holds {body.size}")
    return body.reshape(shape)


def mnist(directory: Path) -> Dataset:
    """MNIST from DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    def find(stem):
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
        raise DataError(f"{directory}: no {stem} (or {stem}.gz); MNIST is never downloaded, "
                        "point mnist:DIR at the four IDX files")

    parts = []
    for prefix in ("train", "t10k"):
        images = _read_idx(find(f"{prefix}-images-idx3-ubyte"), 3)
        labels_path = find(f"{prefix}-labels-idx1-ubyte")
        labels = _read_idx(labels_path, 1).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
        if labels.size and labels.max() > 9:
            raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
        bits = (images.reshape(len(images), -1) > MNIST_LEVEL).astype(np.uint8)
        parts.append((bits, labels))
    if parts[0][0].shape[1] != parts[1][0].shape[1] or parts[0][0].shape[1] > 1024:
        raise DataError(f"{directory}: images of {parts[0][0].shape[1]} and "
                        f"{parts[1][0].shape[1]} pixels; expected the same, at most 1024")
    encoding = {"kind": "threshold", "what": "28x28 pixels 0..255, row-major",
                "bit": f"pixel > {MNIST_LEVEL}"}
    classes = [str(k) for k in range(10)]
    test = Dataset(*parts[1], classes, "payload", f"mnist:{directory}", encoding)
    return Dataset(*parts[0], classes, "payload", f"mnist:{directory}", encoding, test=test)


def _read_csv(path: Path, label_column: str | None):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows, found {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    label_name = label_column or header[-1]
    if label_name not in header:
        raise DataError(f"{path}: no label column '{label_name}' in the header {header}")
    li = header.index(label_name)
    names = [h for i, h in enumerate(header) if i != li]
    if not names:
        raise DataError(f"{path}: no feature columns besides the label '{label_name}'")
    values, labels = [], []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {n}: {len(row)} columns, the header has "
                            f"{len(header)}")
        label = row[li].strip()
        if not label:
            raise DataError(f"{path}: line {n}: missing label in column '{label_name}'")
        try:
            values.append([float(c) for i, c in enumerate(row) if i != li])
        except ValueError:
            bad = next((header[i], c) for i, c in enumerate(row) if i != li and not _is_num(c))
            raise DataError(f"{path}: line {n}: column '{bad[0]}': non-numeric value "
                            f"{bad[1]!r}") from None
        labels.append(label)
    values = np.asarray(values, float)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise DataError(f"{path}: line {r + 2}: column '{names[c]}': not a finite number")
    return names, values, labels, label_name


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def csv_file(path: Path, levels: int, label_column: str | None, split_seed: int,
             test_fraction: float) -> Dataset:
    """CSV: each feature column becomes `levels` thermometer bits.

    The cut points are the column's quantiles k/(levels+1), k = 1..levels, on
    the rows the trainer will train on (the split is recomputed here with the
    trainer's seed and fraction); they are stored in the encoding.
    """
    names, values, labels, label_name = _read_csv(path, label_column)
    classes = sorted(set(labels), key=lambda s: (not _is_num(s), float(s) if _is_num(s) else 0,
                                                 s))
    if len(classes) < 2:
        raise DataError(f"{path}: column '{label_name}' holds one class ({classes[0]}); "
                        "expected 2 or more")
    y = np.array([classes.index(v) for v in labels], np.int64)
    levels = min(levels, CSV_MAX_BITS // len(names))
    if levels < 1:
        raise DataError(f"{path}: {len(names)} feature columns; at most {CSV_MAX_BITS} fit")
    train_idx, _ = stratified_split(y, test_fraction, split_seed)
    q = np.arange(1, levels + 1) / (levels + 1)
    cuts = np.quantile(values[train_idx], q, axis=0).T  # (columns, levels)
    return Dataset(thermometer(values, cuts), y, classes, "payload", f"csv:{path}",
                   {"kind": "thermometer-quantiles", "label_column": label_name,
                    "columns": names, "levels": levels,
                    "bit": "column * levels + k set iff value > cuts[column][k]",
                    "cuts": cuts.tolist()})


# --- headers mode -------------------------------------------------------------

HEADER_BITS = features.FEATURE_BYTES * 8


def frames_dataset(frames_by_class: dict[str, list[bytes]], source: str) -> Dataset:
    """Headers-mode inputs of labeled frames, through the kernel parser's twin.

    Frames the datapath would not classify (not IPv4, truncated, fragments)
    are left out: the kernel never runs the model on them.
    """
    bits, labels = [], []
    classes = list(frames_by_class)
    for c, name in enumerate(classes):
        for frame in frames_by_class[name]:
            result, b = features.model_input(frame, "headers", HEADER_BITS, 0)
            if b is not None:
                bits.append(b)
                labels.append(c)
    return Dataset(np.array(bits, np.uint8).reshape(-1, HEADER_BITS),
                   np.array(labels, np.int64), classes, "headers", source,
                   {"kind": "header-record", "bits": HEADER_BITS,
                    "what": "the 32-byte header record of trainer/features.py, MSB first"})


def pcaps(directory: Path, mode: str = "headers") -> Dataset:
    """DIR/*.pcap (or .pcapng), one file per class; the file stem is the class."""
    from scapy.error import Scapy_Exception

    from xdpnn.traffic.packets import read_pcap, read_pcap_times
    reader = read_pcap_times if mode == "flow" else read_pcap  # flows need the times

    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    files = sorted(p for p in directory.glob("*") if p.suffix in (".pcap", ".pcapng"))
    if len(files) < 2:
        raise DataError(f"{directory}: {len(files)} pcap files; expected one per class, "
                        "2 or more")
    frames_by_class = {}
    for path in files:
        try:
            frames = reader(str(path))
        except (Scapy_Exception, OSError, EOFError, struct.error, ValueError) as e:
            raise DataError(f"{path}: not a readable pcap ({e})") from None
        if mode == "flow":
            usable = flow_records(frames)
        else:
            usable = [f for f in frames if features.header_record(f)[1] is not None]
        if not usable:
            raise DataError(f"{path}: {len(frames)} packets, none an IPv4 packet the "
                            "datapath classifies (an empty capture?)")
        frames_by_class[path.stem] = usable
    if mode == "flow":
        return records_dataset(frames_by_class, f"pcaps:{directory}")
    return frames_dataset(frames_by_class, f"pcaps:{directory}")


def flow_records(packets: list[tuple[int, bytes]]) -> list[bytes]:
    """The flow records the kernel runs the model on, one per inference: a
    flow's record after each of its first packets, up to its final class
    (trainer/flows.py replays the capture in time order)."""
    from xdpnn.trainer import flows
    table = flows.FlowTable()
    out = []
    for now, frame in sorted(packets, key=lambda p: p[0]):
        _, rec, infer = table.step(now, frame)
        if infer:
            out.append(rec)
            table.classified(0)  # the class does not change the record; it ends deciding
    return out


def records_dataset(records_by_class: dict[str, list[bytes]], source: str) -> Dataset:
    """Flow-mode inputs: each 32-byte flow record, MSB first."""
    bits, labels = [], []
    classes = list(records_by_class)
    for c, name in enumerate(classes):
        for rec in records_by_class[name]:
            bits.append(np.unpackbits(np.frombuffer(rec, np.uint8)))
            labels.append(c)
    return Dataset(np.array(bits, np.uint8).reshape(-1, HEADER_BITS),
                   np.array(labels, np.int64), classes, "flow", source,
                   {"kind": "flow-record", "bits": HEADER_BITS,
                    "what": "the 32-byte flow record of trainer/flows.py, MSB first, after "
                            "each packet up to the flow's final class"})
