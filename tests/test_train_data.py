"""Data sources for `xdpnn train`: a good file and bad ones for each loader,
with errors that name the file and the problem, and the CLI's exit code 10."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from cli import xdpnn
from xdpnn.trainer import data, features
from xdpnn.trainer.data import DataError
from xdpnn.trainer.model import load
from xdpnn.traffic import dataset

def test_digits_encoding():
    ds = data.load("digits")
    assert ds.bits.shape == (1797, 256) and ds.mode == "payload"
    # Pixel value 7 sets the first two of its four bits (> 2, > 6).
    assert data.encode_digits(np.full((1, 64), 7), ds.encoding)[0, :4].tolist() == [1, 1, 0, 0]
    assert data.load("digits", levels=2).bits.shape == (1797, 128)
    with pytest.raises(DataError, match="--levels 9"):
        data.load("digits", levels=9)


def test_unknown_source():
    with pytest.raises(DataError, match="data source 'nope'"):
        data.load("nope")


# --- CSV ------------------------------------------------------------------------------

def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def good_csv(path: Path, n: int = 200) -> Path:
    rng = np.random.default_rng(0)
    rows = ["size,ttl,app"]
    for i in range(n):
        app = ("web", "dns", "ssh")[i % 3]
        rows.append(f"{rng.normal(100 * (i % 3), 20):.2f},{rng.integers(30, 70)},{app}")
    return write_csv(path, rows)


def test_csv_good(tmp_path):
    ds = data.load(f"csv:{good_csv(tmp_path / 'flows.csv')}", levels=3)
    assert ds.bits.shape == (200, 6) and ds.classes == ["dns", "ssh", "web"]
    enc = ds.encoding
    assert enc["columns"] == ["size", "ttl"] and enc["label_column"] == "app"
    assert np.array(enc["cuts"]).shape == (2, 3)
    # The cuts are quantiles of the training rows only.
    rest, _ = data.stratified_split(ds.labels, 0.25, 0)
    sizes = np.loadtxt(tmp_path / "flows.csv", delimiter=",", skiprows=1, usecols=0)
    assert enc["cuts"][0] == pytest.approx(np.quantile(sizes[rest], [0.25, 0.5, 0.75]))


@pytest.mark.parametrize("rows,problem", [
    (["a,b,label", "1,2,x", "3,y"], "line 3: 2 columns, the header has 3"),
    (["a,b,label", "1,2,x", "3,oops,y"], "line 3: column 'b': non-numeric value 'oops'"),
    (["a,b,label", "1,2,x", "3,4,"], "line 3: missing label in column 'label'"),
    (["a,b,label", "1,nan,x", "3,4,y"], "line 2: column 'b': not a finite number"),
    (["a,b,label"], "expected a header row and data rows"),
    (["a,b,label", "1,2,x", "3,4,x"], "holds one class"),
    (["a,b", "1,2", "3,4"], None),  # no column named by --label-column
])
def test_csv_bad(tmp_path, rows, problem):
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as e:
        data.load(f"csv:{path}", label_column="label")
    assert str(path) in str(e.value)
    assert (problem or "no label column 'label'") in str(e.value)


def test_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=f"{path}: expected a header row"):
        data.load(f"csv:{path}")


# --- MNIST IDX ---------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_mnist(directory: Path, n_train=30, n_test=10, gz=False) -> Path:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
    return directory


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_good(tmp_path, gz):
    ds = data.load(f"mnist:{fake_mnist(tmp_path, gz=gz)}")
    assert ds.bits.shape == (30, 784) and ds.test.bits.shape == (10, 784)
    assert ds.labels.tolist() == (np.arange(30) % 10).tolist()


def test_mnist_bad(tmp_path):
    fake_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{path}: header says"):
        data.load(f"mnist:{tmp_path}")
    path.write_bytes(b"not idx")
    with pytest.raises(DataError, match=f"{path}: not an IDX file"):
        data.load(f"mnist:{tmp_path}")
    path.unlink()
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte.*never downloaded"):
        data.load(f"mnist:{tmp_path}")


def test_mnist_labels_disagree(tmp_path):
    fake_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, np.arange(29) % 10)
    with pytest.raises(DataError, match=f"{path}: 29 labels for 30 images"):
        data.load(f"mnist:{tmp_path}")


# --- traffic and pcaps ----------------------------------------------------------------

def test_traffic_set_is_deterministic_and_in_range():
    a, b = dataset.generate(per_class=20, seed=1), dataset.generate(per_class=20, seed=1)
    assert a == b and list(a) == list(dataset.CLASSES)
    for name, frames in a.items():
        for f in frames:
            result, rec = features.header_record(f)
            assert result == "classified", name
            src, dst = f[14 + 12:14 + 16], f[14 + 16:14 + 20]
            assert src[0] == dst[0] == 198 and src[1] in (18, 19) and dst[1] in (18, 19)


def test_pcaps_good(tmp_path):
    dataset.write_pcaps(tmp_path, per_class=15, seed=2)
    ds = data.load(f"pcaps:{tmp_path}")
    assert ds.mode == "headers" and ds.bits.shape == (15 * 7, 256)
    assert ds.classes == sorted(dataset.CLASSES)
    frames = dataset.generate(per_class=15, seed=2)
    want = data.frames_dataset({c: frames[c] for c in ds.classes}, "x")
    assert np.array_equal(ds.bits, want.bits)


def test_pcaps_empty_capture(tmp_path):
    dataset.write_pcaps(tmp_path, per_class=3, seed=2)
    from scapy.utils import wrpcap
    empty = tmp_path / "dns.pcap"
    wrpcap(str(empty), [])
    with pytest.raises(DataError, match=f"{empty}: 0 packets"):
        data.load(f"pcaps:{tmp_path}")
    empty.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"{empty}: not a readable pcap"):
        data.load(f"pcaps:{tmp_path}")


def test_pcaps_flow_mode_samples_are_the_twins_records(tmp_path):
    """One sample per inference the flow datapath makes, in capture order."""
    from scapy.all import IP, TCP, Ether, raw
    from scapy.data import DLT_EN10MB
    from scapy.utils import RawPcapWriter

    from xdpnn.trainer import flows
    from xdpnn.traffic.packets import read_pcap_times
    for name, dport in (("web", 80), ("mail", 25)):
        w = RawPcapWriter(str(tmp_path / f"{name}.pcap"), linktype=DLT_EN10MB)
        w.write_header(None)
        for i in range(11):  # 11 packets: the class is final at the 8th
            back = i % 2
            ip = IP(src="198.18.0.2", dst="198.18.0.1") if back else IP(src="198.18.0.1",
                                                                         dst="198.18.0.2")
            ports = dict(sport=dport, dport=4000) if back else dict(sport=4000, dport=dport)
            w.write_packet(raw(Ether() / ip / TCP(flags="A", **ports) / (b"x" * 40 * i)),
                           sec=1000 + i, usec=i * 1000)
        w.close()
    ds = data.load(f"pcaps:{tmp_path}", input_mode="flow")
    assert ds.mode == "flow" and ds.classes == ["mail", "web"]
    assert ds.bits.shape == (16, 256)
    table = flows.FlowTable()
    recs = [table.step(t, f)[1] for t, f in read_pcap_times(str(tmp_path / "mail.pcap"))[:8]]
    assert np.array_equal(ds.bits[:8], np.stack([flows.record_bits(r, 256) for r in recs]))
    assert ds.bits[7, 4 * 8:12 * 8].reshape(8, 8)[:, 0].all()  # all 8 packets present
    with pytest.raises(DataError, match="flow mode trains on pcaps:DIR only"):
        data.load("digits", input_mode="flow")


def test_pcaps_need_two_classes(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        data.load(f"pcaps:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="0 pcap files"):
        data.load(f"pcaps:{tmp_path}")


# --- the command ------------------------------------------------------------------------



def test_cli_train_writes_a_model_with_its_report(tmp_path):
    out = tmp_path / "flows.npz"
    r = xdpnn("train", "--data", f"csv:{good_csv(tmp_path / 'flows.csv')}", "--hidden", "16",
              "--epochs", "5", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "validation accuracy" in r.stdout and f"wrote {out}" in r.stdout
    model = load(out)
    assert model.shape == "8-16-3" and model.classes == ["dns", "ssh", "web"]
    assert model.provenance["report"]["encoding"]["kind"] == "thermometer-quantiles"


def test_cli_train_bad_data_exits_10(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["a,b,label", "1,2,x", "3,oops,y"])
    r = xdpnn("train", "--data", f"csv:{path}", "--out", tmp_path / "m.npz")
    assert r.returncode == 10 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "non-numeric" in lines[0]


def test_cli_train_bad_shape_exits_2(tmp_path):
    r = xdpnn("train", "--hidden", "2100", "--out", tmp_path / "m.npz")
    assert r.returncode == 2 and "expected 1..2048" in r.stderr
