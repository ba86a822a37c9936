"""Hostile and broken data files: each is refused with one clear line, with bounded work.

Every case writes small files in ``tmp_path`` (nothing is downloaded) and checks the exact
exception type and that its message names the file (or argument), the rule and the value.
The gzip bomb and the oversized header also go through the CLI in a child process, whose
peak memory is measured (``tests/hostile.py``).
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.data.cifar import MAX_BATCH_BYTES
from slimtune.data.datasets import load_dataset, read_idx
from slimtune.errors import ConfigError, DataError, UnknownNameError, UntrustedCodeError
from slimtune.trust import Trust
from tests.hostile import run_cli

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# -- IDX helpers ----------------------------------------------------------------------
def _header(*dims: int) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _idx_bytes(arr: np.ndarray) -> bytes:
    return _header(*arr.shape) + arr.astype(np.uint8).tobytes()


def _write(path: Path, raw: bytes, compress: bool) -> Path:
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def _idx_dir(d: Path, ytr: np.ndarray | None = None, yte: np.ndarray | None = None,
             n_images: int | None = None) -> Path:
    """A small valid IDX set (6 x 6 images): 200 training and 40 test examples over 10
    classes unless ``ytr`` / ``yte`` say otherwise; ``n_images`` training images."""
    ytr = np.arange(200) % 10 if ytr is None else ytr
    yte = np.arange(40) % 10 if yte is None else yte
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (len(ytr) if n_images is None else n_images, 6, 6))
    xte = rng.integers(0, 256, (len(yte), 6, 6))
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES, (xtr, ytr, xte, yte), strict=True):
        _write(d / name, _idx_bytes(arr), compress=True)
    return d


def _peak_bytes(fn, *args):
    """``fn(*args)``'s exception and the peak of memory traced while it ran (numpy's
    arrays included)."""
    tracemalloc.start()
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        caught = exc
    else:
        caught = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return caught, peak


# -- gzip bomb --------------------------------------------------------------------------
BOMB_MEMBER = 16 * 2**20  # zeros per gzip member
BOMB_MEMBERS = 128  # 2 GiB inflated


@pytest.fixture(scope="module")
def bomb_dir(tmp_path_factory) -> Path:
    """An IDX set whose training images are a gzip bomb: the header declares 10 images of
    6 x 6, the stream inflates to 2 GiB of zeros. It is written as gzip members
    (concatenated members are one valid gzip stream), each 16 MiB of zeros compressed once,
    so writing it takes a moment and no memory."""
    d = _idx_dir(tmp_path_factory.mktemp("bomb"))
    zeros = gzip.compress(bytes(BOMB_MEMBER), compresslevel=9, mtime=0)
    path = d / "train-images-idx3-ubyte.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(_header(10, 6, 6), mtime=0))
        for _ in range(BOMB_MEMBERS):
            f.write(zeros)
    assert path.stat().st_size < 4 * 2**20
    return d


def test_a_gzip_bomb_is_refused_after_reading_just_past_its_declared_size(bomb_dir):
    path = bomb_dir / "train-images-idx3-ubyte.gz"
    exc, peak = _peak_bytes(read_idx, path)
    assert type(exc) is DataError, exc
    msg = str(exc)
    assert str(path) in msg and "trailing data" in msg and "10 x 6 x 6 = 360 values" in msg
    assert peak < 8 * 2**20  # chunks, never the stream: 2 GiB would not fit here
    with pytest.raises(DataError, match="trailing data"):
        load_dataset("fashion-mnist", bomb_dir)


def test_a_gzip_bomb_is_one_line_through_the_cli_with_little_memory(bomb_dir, tmp_path):
    res = run_cli(["train", "--data", "fashion-mnist", "--data-dir", str(bomb_dir),
                   "--epochs", "1"], tmp_path)
    res.assert_refused("train-images-idx3-ubyte.gz", "trailing data")
    assert res.peak_mb < 1024, res.peak_mb  # far below the bound: the bomb was never inflated


# -- headers that declare too much -----------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_a_header_declaring_ten_billion_values_is_refused_before_reading(compress, tmp_path):
    path = _write(tmp_path / "big-idx3-ubyte", _header(100_000, 100_000) + bytes(64),
                  compress)
    exc, peak = _peak_bytes(read_idx, path)
    assert type(exc) is DataError, exc
    assert str(path) in str(exc)
    assert "10,000,000,000 values" in str(exc) and "more than the 1,073,741,824" in str(exc)
    assert peak < 2**20


@pytest.mark.parametrize("compress, rule", [
    (False, "truncated: its header declares 1000 x 1000 x 1000 = 1,000,000,000 values, but "
            "only 64 bytes follow"),
    (True, "more than a"),
])
def test_a_header_declaring_more_than_the_file_can_hold_is_refused_before_reading(
        compress, rule, tmp_path):
    path = _write(tmp_path / "big-idx3-ubyte", _header(1000, 1000, 1000) + bytes(64), compress)
    exc, peak = _peak_bytes(read_idx, path)
    assert type(exc) is DataError, exc
    assert str(path) in str(exc) and rule in str(exc)
    assert peak < 2**20  # no 1 GB buffer was taken for the declared body


def test_a_huge_header_is_one_line_through_the_cli(tmp_path):
    d = _idx_dir(tmp_path / "data")
    (d / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_header(1000, 1000, 1000) + bytes(64)))
    res = run_cli(["train", "--data", "fashion-mnist", "--data-dir", str(d), "--epochs", "1"],
                  tmp_path)
    res.assert_refused("train-images-idx3-ubyte.gz", "1,000,000,000 values", "gzip file")


# -- truncated, foreign and corrupt files ------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_a_truncated_idx_file_is_refused(compress, tmp_path):
    path = _write(tmp_path / "x-idx3-ubyte", _header(10, 6, 6) + bytes(100), compress)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "truncated: its header declares 10 x 6 x 6 = 360 values, but only 100 bytes" \
        in str(info.value)


def test_a_raw_idx_file_longer_than_its_header_is_refused(tmp_path):
    path = _write(tmp_path / "x-idx1-ubyte", _header(10) + bytes(11), compress=False)
    with pytest.raises(DataError, match=r"trailing data: 11 bytes follow its 8-byte header, "
                                        r"longer than its header says \(10 values\)"):
        read_idx(path)


def test_a_gzip_stream_cut_short_is_refused_as_truncated(tmp_path):
    whole = gzip.compress(_idx_bytes(np.random.default_rng(0).integers(0, 256, (50, 6, 6))))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


@pytest.mark.parametrize("raw, rule", [
    (b"hello, this is not an IDX file at all", "magic bytes 68 65 6c 6c"),
    (b"\x00\x00\x0d\x03" + bytes(64), "magic bytes 00 00 0d 03"),  # floats: not ours
    (b"\x00\x00\x08\x07" + bytes(64), "magic bytes 00 00 08 07"),  # 7 dimensions
    (b"\x00\x00", "truncated: 2 bytes, shorter than the 4-byte magic"),
    (b"\x00\x00\x08\x03\x00\x00", "ends inside them"),
])
def test_a_file_that_is_not_idx_is_refused(raw, rule, tmp_path):
    path = _write(tmp_path / "x-idx3-ubyte", raw, compress=False)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path} is not a valid IDX file: ")
    assert rule in str(info.value)


@pytest.mark.parametrize("raw", [
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 64,  # an invalid deflate block
    b"this is plain text, not gzip at all",
])
def test_corrupt_gzip_is_refused(raw, tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(raw)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "not valid gzip" in str(info.value)


def test_a_gzip_file_with_a_bad_checksum_is_refused(tmp_path):
    raw = bytearray(gzip.compress(_idx_bytes(np.arange(20, dtype=np.uint8)), mtime=0))
    raw[-8] ^= 0xFF  # the CRC-32 of the content
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="not valid gzip.*CRC"):
        read_idx(path)


# -- splits that cannot work ------------------------------------------------------------
def test_zero_examples_are_refused(tmp_path):
    path = _write(tmp_path / "x-idx1-ubyte", _header(0), compress=True)
    with pytest.raises(DataError, match=r"x-idx1-ubyte.gz is not a valid IDX file: 0 "
                                        r"examples \(its header declares 0\)"):
        read_idx(path)
    d = _idx_dir(tmp_path / "data")
    _write(d / "t10k-images-idx3-ubyte", _header(0, 6, 6), compress=True)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not a valid IDX file: "
                                        "0 examples"):
        load_dataset("mnist", d)


def test_a_class_with_one_training_example_is_refused(tmp_path):
    ytr = np.arange(200) % 9  # classes 0..8 ...
    ytr[0] = 9  # ... and one example of class 9
    d = _idx_dir(tmp_path / "data", ytr=ytr)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", d)
    msg = str(info.value)
    assert f"`mnist` in {d}" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "class 9 has 1 training example" in msg and "needs at least 2" in msg


def test_a_class_seen_only_in_the_test_labels_is_refused(tmp_path):
    d = _idx_dir(tmp_path / "data", ytr=np.arange(200) % 9)  # no class 9 in training
    with pytest.raises(DataError, match="class 9 has 0 training examples"):
        load_dataset("mnist", d)


def test_too_few_training_examples_for_the_validation_split_are_refused(tmp_path):
    d = _idx_dir(tmp_path / "data", ytr=np.arange(40) % 10)  # 4 of each class, 4 held out
    with pytest.raises(DataError, match=r"has 40 examples, too few for a 10% validation "
                                        r"split holding all 10 classes; it needs at least 91"):
        load_dataset("mnist", d)


def test_labels_and_images_that_differ_in_number_are_refused(tmp_path):
    d = _idx_dir(tmp_path / "data", n_images=199)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", d)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg
    assert "has 199 images but 200 labels" in msg


def test_training_and_test_images_of_different_sizes_are_refused(tmp_path):
    d = _idx_dir(tmp_path / "data")
    _write(d / "t10k-images-idx3-ubyte", _idx_bytes(np.zeros((40, 5, 6))), compress=True)
    with pytest.raises(DataError, match="training images are 6 x 6 but the test images 5 x 6"):
        load_dataset("mnist", d)


def test_labels_file_holding_images_is_refused(tmp_path):
    d = _idx_dir(tmp_path / "data")
    _write(d / "train-labels-idx1-ubyte", _idx_bytes(np.zeros((200, 6, 6))), compress=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz must hold N labels, "
                                        r"but holds an array of shape \(200, 6, 6\)"):
        load_dataset("mnist", d)


def test_a_valid_small_idx_set_loads(tmp_path):
    s = load_dataset("mnist", _idx_dir(tmp_path / "data"))
    assert s.num_classes == 10 and s.input_shape == (1, 6, 6)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (180, 20, 40)
    assert set(s.y_val.tolist()) == set(range(10))


# -- subsets too small for the classes ---------------------------------------------------
def test_a_subset_below_four_times_the_classes_is_refused():
    with pytest.raises(ConfigError) as info:
        load_dataset("digits", subset=8)
    assert str(info.value) == ("`--subset` must be at least 40 (4 x the 10 classes of "
                               "`digits`), but got 8")
    with pytest.raises(ConfigError, match=r"`--subset` must be at least 40 .* got 39"):
        load_dataset("digits", subset=39)
    with pytest.raises(ConfigError) as info:
        load_dataset("digits", val_subset=9)
    assert str(info.value) == ("`--val-subset` must be at least 10 (the 10 classes of "
                               "`digits`), but got 9")


def test_the_smallest_subset_holds_every_class_in_every_split():
    s = load_dataset("digits", subset=40)
    for y in (s.y_train, s.y_val, s.y_test):
        assert set(y.tolist()) == set(range(10))
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (40, 10, 10)


def test_a_subset_just_below_the_training_size_works():
    full = load_dataset("digits")
    n = len(full.y_train) - 3  # sklearn's stratified split would leave 3 for 10 classes
    s = load_dataset("digits", subset=n, val_subset=len(full.y_val) - 1)
    assert len(s.y_train) == n and len(s.y_val) == len(full.y_val) - 1
    assert set(s.y_train.tolist()) == set(range(10))


def test_a_subset_too_small_is_one_line_through_the_cli(tmp_path):
    res = run_cli(["train", "--data", "digits", "--subset", "8", "--epochs", "1"], tmp_path)
    res.assert_refused("`--subset` must be at least 40", "`digits`", "got 8")


# -- CIFAR-10 batches ---------------------------------------------------------------------
def _batch(n: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            "labels": [i % 10 for i in range(n)], "batch_label": "fake"}


def _fake_cifar(root: Path, protocol: int = 2, keys: type = str) -> Path:
    """``cifar-10-batches-py`` with five training batches and a test batch of 20 images
    each (every class twice), pickled by this Python with ``protocol``; no batches.meta."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        doc = _batch(seed=i)
        if keys is bytes:
            doc = {k.encode(): v for k, v in doc.items()}
        with open(d / name, "wb") as f:
            pickle.dump(doc, f, protocol=protocol)
    return d


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING or BINSTRING)."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for an official CIFAR-10 batch:
    str keys, a numpy array rebuilt by ``numpy.core.multiarray._reconstruct``."""
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
             + b"K\x00\x85" + _py2_str(b"b") + b"\x87R"
             + b"(K\x01" + b"".join(b"J" + struct.pack("<i", n) for n in data.shape) + b"\x86"
             + dtype + b"\x89" + _py2_str(data.tobytes()) + b"tb")
    labs = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + labs
            + _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5") + b"u.")


def _check_loaded(s) -> None:
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10 and s.augment == "crop_flip"
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (90, 10, 20)
    assert set(s.y_val.tolist()) == set(range(10))
    assert abs(float(s.x_train.mean())) < 0.05  # normalized with the training statistics


def test_cifar_batches_pickled_by_python3_with_protocol_2_load(tmp_path):
    d = _fake_cifar(tmp_path)
    with open(d / "data_batch_1", "rb") as f:
        assert b"_codecs" in f.read()  # the case this covers: bytes rebuilt by _codecs.encode
    s = load_dataset("cifar10", tmp_path)
    _check_loaded(s)
    # the images are the batch's rows as 3 x 32 x 32, in file order (test split: not shuffled)
    test = _batch(seed=5)
    raw = torch.from_numpy(test["data"].reshape(20, 3, 32, 32).astype(np.float32))
    order = torch.argsort(raw[:, 0, 0, 0])
    assert torch.equal(torch.argsort(s.x_test[:, 0, 0, 0]), order)
    assert s.y_test.tolist() == test["labels"]


@pytest.mark.parametrize("protocol, keys", [(2, bytes), (4, str), (5, str)])
def test_cifar_batches_of_other_protocols_and_bytes_keys_load(protocol, keys, tmp_path):
    _fake_cifar(tmp_path, protocol=protocol, keys=keys)
    _check_loaded(load_dataset("cifar10", tmp_path))


def test_cifar_batches_in_the_official_python2_format_load(tmp_path):
    d = _fake_cifar(tmp_path)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        doc = _batch(seed=i)
        (d / name).write_bytes(_py2_batch(doc["data"], doc["labels"]))
    s = load_dataset("cifar10", d)  # the batches directory itself works too
    _check_loaded(s)
    assert s.y_test.tolist() == _batch(seed=5)["labels"]


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    d = _fake_cifar(tmp_path)
    marker = tmp_path / "MARKER"
    doc = _batch()
    doc["data"] = _System(marker)
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump(doc, f, protocol=2)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    assert str(info.value).startswith(f"{d / 'data_batch_3'} is not a CIFAR-10 python batch")
    assert "refusing to load posix.system" in str(info.value)
    assert not marker.exists()
    res = run_cli(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"],
                  tmp_path)
    res.assert_refused("data_batch_3", "refusing to load posix.system")
    assert not marker.exists()


class _Rot13:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))  # pickled as _codecs.encode


def test_codecs_encode_is_allowed_only_for_latin1_bytes(tmp_path):
    d = _fake_cifar(tmp_path)
    doc = _batch()
    doc["batch_label"] = _Rot13()
    with open(d / "test_batch", "wb") as f:
        pickle.dump(doc, f, protocol=2)
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 python batch: "
                                        r"refusing to load _codecs.encode\(str, 'rot13'\)"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("change, rule", [
    ({"data": np.zeros((20, 3000), np.uint8)},
     "`data` must be an N x 3072 uint8 array, but is a uint8 array of shape (20, 3000)"),
    ({"data": np.zeros((20, 3072), np.float32)}, "but is a float32 array of shape (20, 3072)"),
    ({"data": [0] * 3072}, "`data` must be an N x 3072 uint8 array, but is a list"),
    ({"labels": [0] * 19}, "it has 20 images but 19 labels"),
    ({"labels": [10] * 20}, "labels must be classes 0..9, but one is 10"),
    ({"labels": [0.5] * 20}, "`labels` must be a list of ints, but is a list"),
    ({"labels": None}, "no `data` / `labels` entries"),
])
def test_a_cifar_batch_of_the_wrong_shape_or_type_is_refused(change, rule, tmp_path):
    d = _fake_cifar(tmp_path)
    doc = {**_batch(), **change}
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump(doc, f, protocol=2)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    assert str(info.value).startswith(f"{d / 'data_batch_2'} is not a CIFAR-10 python batch")
    assert rule in str(info.value)


def test_a_cifar_batch_that_is_not_a_dict_or_too_large_is_refused(tmp_path):
    d = _fake_cifar(tmp_path)
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(DataError, match="data_batch_4 is not a CIFAR-10 python batch: it "
                                        "holds a list, not a dict"):
        load_dataset("cifar10", tmp_path)
    with open(d / "data_batch_4", "wb") as f:
        f.truncate(MAX_BATCH_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(DataError, match=f"data_batch_4 is not a CIFAR-10 python batch: it is "
                                        f"{MAX_BATCH_BYTES + 1:,} bytes, more than"):
        load_dataset("cifar10", tmp_path)


def test_cifar_without_a_class_in_training_is_refused(tmp_path):
    d = _fake_cifar(tmp_path)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        doc = _batch()
        doc["labels"] = [i % 9 for i in range(20)]
        with open(d / name, "wb") as f:
            pickle.dump(doc, f, protocol=2)
    with pytest.raises(DataError, match=r"`cifar10` in .*class 9 has 0 training examples in "
                                        r"the training batches"):
        load_dataset("cifar10", tmp_path)


def test_loading_cifar_needs_no_torchvision(tmp_path):
    _fake_cifar(tmp_path)
    code = ("import sys; from slimtune.data import load_dataset; "
            f"load_dataset('cifar10', {str(tmp_path)!r}); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# -- user data sets through the trust boundary --------------------------------------------
@pytest.fixture
def user_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module of data functions in ``tmp_path`` (a fresh name per test), on sys.path;
    ``good`` touches a marker file when it runs."""
    name = f"hostile_data_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "RAN"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import torch

        def _make(n, classes=4):
            y = torch.arange(n) % classes
            return torch.randn(n, 1, 4, 4) + y[:, None, None, None], y

        def good():
            open({str(marker)!r}, "w").close()
            return _make(40), _make(12), _make(12)

        def one_of_a_class():
            x, y = _make(40)
            y[0] = 4  # class 4 once
            return (x, y), _make(12), _make(12)

        def empty_test():
            return _make(40), _make(12), (torch.zeros(0, 1, 4, 4), torch.zeros(0))

        def mismatch():
            x, y = _make(40)
            return (x, y[:39]), _make(12), _make(12)

        def negative():
            x, y = _make(40)
            return (x, y - 1), _make(12), _make(12)

        def fractions():
            x, y = _make(40)
            return (x, y + 0.5), _make(12), _make(12)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_a_user_data_set_named_by_a_file_needs_trust(user_module):
    mod, marker = user_module
    spec = f"{mod}:good"
    with pytest.raises(UntrustedCodeError) as info:
        load_dataset(spec, source="the model card m.json")
    msg = str(info.value)
    assert msg.startswith(f"the model card m.json names the data set `{spec}`")
    assert f"--trust-module {mod}" in msg
    assert not marker.exists() and mod not in sys.modules  # neither imported nor run
    s = load_dataset(spec, trust=Trust.of(mod), source="the model card m.json")
    assert marker.exists() and s.num_classes == 4 and len(s.y_train) == 40
    assert load_dataset(spec).num_classes == 4  # the caller's own name: trusted
    # cached from the trusted calls, still refused when untrusted
    with pytest.raises(UntrustedCodeError):
        load_dataset(spec, source="the model card m.json")
    with pytest.raises(UntrustedCodeError):
        load_dataset(spec, trust=Trust.of("some_other_module"), source="the study of run")


@pytest.mark.parametrize("fn, rule", [
    ("one_of_a_class", "class 4 has 1 training example in its train split"),
    ("empty_test", "its test split has 0 examples"),
    ("mismatch", "its train split has 40 images but 39 labels"),
    ("negative", "labels must be classes 0..3, but one is -1"),
    ("fractions", "labels must be whole class numbers"),
])
def test_a_user_data_set_whose_splits_cannot_work_is_refused(fn, rule, user_module):
    mod, _ = user_module
    with pytest.raises(DataError) as info:
        load_dataset(f"{mod}:{fn}")
    assert f"`{mod}:{fn}`" in str(info.value) and rule in str(info.value)


def test_a_torchvision_data_set_name_is_unknown_not_imported():
    with pytest.raises(UnknownNameError, match="unknown dataset `torchvision:MNIST`"):
        load_dataset("torchvision:MNIST", source="the model card m.json")


def test_a_malformed_module_name_is_refused():
    with pytest.raises(UnknownNameError, match="not of the form `package.module:function`"):
        load_dataset("os.path:join; rm -rf /")
