"""Datasets (IDX, CIFAR batches, user code), the model zoo and teacher training."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.data import load_dataset
from slimtune.data.datasets import crop_flip
from slimtune.errors import ConfigError, DataError, SlimtuneError, UnknownNameError
from slimtune.models import build_model


def _write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_idx_dir(d: Path, n_train=300, n_test=80, compress=True) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    ytr, yte = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    xtr = rng.integers(0, 256, (n_train, 28, 28))
    xte = rng.integers(0, 256, (n_test, 28, 28))
    xtr[:, 0, 0], xte[:, 0, 0] = ytr * 20, yte * 20  # tie each image to its label
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        _write_idx(d / name, arr, compress)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("name, compress", [("fashion-mnist", True), ("mnist", False)])
def test_idx_files_load_into_stratified_normalized_splits(name, compress, tmp_path):
    xtr, ytr, xte, yte = _fake_idx_dir(tmp_path / name, compress=compress)
    s = load_dataset(name, tmp_path / name)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert len(s.y_train) + len(s.y_val) == 300 and len(s.y_val) == 30
    assert torch.equal(s.y_test, torch.from_numpy(yte.astype(np.int64)))
    assert abs(float(s.x_train.mean())) < 0.05 and abs(float(s.x_train.std()) - 1) < 0.05
    # every image still carries its own label (the pixel we planted)
    for x, y in [(s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)]:
        pix = x[:, 0, 0, 0]
        order = torch.argsort(pix)
        assert torch.all(torch.diff(y[order]) >= 0)
    # deterministic: the same split every time
    again = load_dataset(name, tmp_path / name)
    assert torch.equal(again.y_val, s.y_val)


def test_missing_or_malformed_data_dirs_say_what_files_to_get(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*apt-get install "
                                        "dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("cifar10")
    _fake_idx_dir(tmp_path / "bad")
    (tmp_path / "bad" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(DataError, match="not a valid IDX file"):
        load_dataset("fashion-mnist", tmp_path / "bad")
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        load_dataset("imagenet")


def _fake_cifar(root: Path, per_batch=40, n_test=50) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar10_python_batches_load_with_augmentation(tmp_path):
    _fake_cifar(tmp_path)
    s = load_dataset("cifar10", tmp_path)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10 and s.augment == "crop_flip"
    assert len(s.y_train) + len(s.y_val) == 200 and len(s.y_test) == 50
    assert load_dataset("cifar10", tmp_path / "cifar-10-batches-py").y_test.equal(s.y_test)
    g = torch.Generator().manual_seed(0)
    out = s.augment_batch(s.x_train[:16], g)
    assert out.shape == s.x_train[:16].shape and not torch.equal(out, s.x_train[:16])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/slimtune-pwned",))


def test_a_cifar_batch_that_is_not_plain_data_is_refused_not_executed(tmp_path):
    _fake_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", tmp_path)
    assert not Path("/tmp/slimtune-pwned").exists()


def test_crop_flip_moves_pixels_but_keeps_content():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = crop_flip(x, pad=2, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_user_dataset_by_import_path():
    s = load_dataset("tests.user_code:tiny_data")
    assert s.num_classes == 4 and s.input_shape == (1, 8, 8) and len(s.y_train) == 200
    with pytest.raises(UnknownNameError, match="cannot load data set"):
        load_dataset("tests.user_code:nope")


def test_subset_is_stratified_and_smaller():
    s = load_dataset("digits", subset=200)
    assert len(s.y_train) == 200 and len(s.y_val) == 50 and len(s.y_test) == 50
    assert set(s.y_train.tolist()) == set(range(10))


def test_val_subset_sizes_the_validation_split_alone():
    full = load_dataset("digits")
    s = load_dataset("digits", subset=200, val_subset=120)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (200, 120, 50)
    assert set(s.y_val.tolist()) == set(range(10))  # stratified
    only_val = load_dataset("digits", val_subset=100)  # the other splits whole
    assert (len(only_val.y_train), len(only_val.y_val), len(only_val.y_test)) == (
        len(full.y_train), 100, len(full.y_test))
    more = load_dataset("digits", subset=200, val_subset=10_000)  # capped at what there is
    assert len(more.y_val) == len(full.y_val)
    with pytest.raises(ConfigError, match="--val-subset"):
        load_dataset("digits", val_subset=0)


@pytest.mark.parametrize("name, shape", [
    ("vgg_small", (1, 28, 28)), ("vgg_small", (3, 32, 32)), ("resnet20", (3, 32, 32)),
    ("resnet32", (1, 8, 8)), ("torchvision:resnet18", (1, 8, 8)),
    ("tests.user_code:make_model", (1, 8, 8)),
])
def test_models_build_for_the_datasets_shape_and_classes(name, shape):
    model = build_model(name, 7, shape).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_unknown_models_are_clear_errors():
    for name, msg in [("vgg_huge", "unknown model"), ("torchvision:nonet", "torchvision:nonet"),
                      ("tests.user_code:missing", "cannot load model")]:
        with pytest.raises(UnknownNameError, match=msg):
            build_model(name, 10, (1, 8, 8))


def test_teacher_recipe_reaches_97_percent_on_digits_and_is_cached(tmp_path, monkeypatch):
    from slimtune.models.teacher import train_command

    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path))
    first = train_command("small_cnn", "digits")
    assert first["source"] == "trained" and first["test_accuracy"] >= 0.97
    second = train_command("small_cnn", "digits")
    assert second["source"] == "cache" and second["path"] == first["path"]
    assert second["test_accuracy"] == first["test_accuracy"]


def test_checkpoint_is_loaded_safely_and_must_match(tmp_path):
    from slimtune.models.teacher import load_checkpoint

    model = build_model("tests.user_code:make_model", 10, (1, 8, 8))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = load_checkpoint(build_model("tests.user_code:make_model", 10, (1, 8, 8)),
                            tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    with pytest.raises(SlimtuneError, match="not a state dict of this model"):
        load_checkpoint(build_model("small_cnn", 10, (1, 8, 8)), tmp_path / "w.pt")
