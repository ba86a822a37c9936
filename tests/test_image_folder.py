"""``imagefolder:PATH``: real PNG files streamed batch by batch, on the same contract as the
splits held in memory, and searched end to end."""

from __future__ import annotations

import os

import pytest
import torch

import slimtune
from slimtune.data.datasets import load_dataset
from slimtune.data.folder import FolderSplit, parse_name
from slimtune.data.split import TensorSplit
from slimtune.errors import DataError
from slimtune.search import SearchConfig, search
from slimtune.trust import user_module
from tests.image_folders import have_fashion_mnist, write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not have_fashion_mnist():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's dataset-fashion-mnist")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return write_image_folder(tmp_path_factory.mktemp("images"), train=300, val=100, test=60)


def _held(split: FolderSplit) -> TensorSplit:
    """The same split decoded at once into tensors."""
    xs, ys = zip(*((b.x, b.y) for b in split.batches(1000)), strict=True)
    return TensorSplit(torch.cat(xs), torch.cat(ys))


def test_a_folder_streams_what_tensors_would_hold(folder):
    ds = load_dataset(f"imagefolder:{folder}")
    assert isinstance(ds.train, FolderSplit) and ds.input_shape == (1, 32, 32)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes) == (300, 100, 60, 10)
    held = _held(ds.val)
    for a, b in zip(ds.val.batches(33), held.batches(33), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index,
                                                                                b.index)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for a, b in zip(ds.val.batches(40, shuffle=True, generator=g1),
                    held.batches(40, shuffle=True, generator=g2), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    x = held.x
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # normalized
    assert torch.equal(_held(ds.val.head(7)).x, x[:7])
    assert torch.equal(_held(ds.val.take(torch.tensor([5, 2]))).x, x[[5, 2]])
    assert ds.train.augments and not ds.val.augments
    augmented = next(ds.train.batches(16, augment=True,
                                      generator=torch.Generator().manual_seed(0))).x
    assert augmented.shape == (16, 1, 32, 32)


def test_image_size_and_subset(folder):
    ds = load_dataset(f"imagefolder16:{folder}", subset=100)
    assert ds.input_shape == (1, 16, 16)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 25, 25)
    assert parse_name(f"imagefolder:{folder}") == (folder, 32)


def test_the_fingerprint_follows_the_files(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    a = load_dataset(f"imagefolder:{copy}").val.fingerprint()
    assert load_dataset(f"imagefolder:{copy}").val.fingerprint() == a
    victim = next((copy / "val").rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)
    from slimtune.data import datasets

    datasets._cached.cache_clear()
    assert load_dataset(f"imagefolder:{copy}").val.fingerprint() != a


def test_bad_folders_are_one_line(folder, tmp_path):
    import shutil

    def refused(root, *words):
        from slimtune.data import datasets

        datasets._cached.cache_clear()
        with pytest.raises(DataError) as exc:
            load_dataset(f"imagefolder:{root}")
        msg = str(exc.value)
        assert "\n" not in msg
        for w in words:
            assert w in msg, (w, msg)

    refused(tmp_path / "none", "is not a directory")
    bare = tmp_path / "bare"
    shutil.copytree(folder / "train", bare / "train")
    refused(bare, "no folder", "val")
    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    (odd / "val" / "zebra").mkdir()
    (odd / "val" / "zebra" / "z.png").write_bytes((next((odd / "val").rglob("*.png"))
                                                   ).read_bytes())
    refused(odd, "class folder `zebra`", "train/ does not have")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    png = sorted((broken / "val").rglob("*.png"))[0]
    png.write_bytes(b"not a png")
    from slimtune.data import datasets

    datasets._cached.cache_clear()
    ds = load_dataset(f"imagefolder:{broken}")
    with pytest.raises(DataError, match="cannot read the image .*png"):
        list(ds.val.batches(50))


def test_an_image_folder_is_data_not_code():
    assert user_module("imagefolder:/tmp/x") is None
    assert user_module("imagefolder64:/tmp/x") is None
    assert user_module("imagefolders.mod:fn") == "imagefolders.mod"  # a module, as ever


def test_a_search_on_an_image_folder_of_pngs_end_to_end(ray_session, folder, tmp_path):
    config = SearchConfig(data=f"imagefolder:{folder}", model="small_cnn", trials=2, epochs=1,
                          teacher_epochs=3, run_dir=tmp_path / "run")
    result = search(config)
    assert result.counts["done"] == 2, [t.user_attrs.get("error")
                                        for t in result.run.study.trials]
    p = result.front[0]
    card = slimtune.export(result.run.dir, p.trial, tmp_path / "s.slim")
    assert card["dataset"] == f"imagefolder:{folder}" and card["input_shape"] == [1, 32, 32]
    again = slimtune.evaluate(tmp_path / "s.slim")  # the card names the folder: read again
    assert again["examples"] == 60
    assert again["accuracy"] == pytest.approx(card["test_accuracy"], abs=1e-6)
