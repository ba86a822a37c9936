"""A notebook's model and data, given as Python objects, searched through the real Ray path;
the artifacts name no code and load with the caller's architecture."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimtune
from slimtune import inmemory
from slimtune.errors import DataError, UnknownNameError
from slimtune.export.artifact import read_header


def _digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return (x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), (x[1400:], y[1400:])


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_a_notebook_model_and_data_loaders_search_through_ray(ray_session, tmp_path):
    class NotebookNet(nn.Module):  # defined here, as in a notebook: no module imports it
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8),
                                          nn.ReLU(), nn.Flatten())
            self.head = nn.Sequential(nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.head(self.features(x))

    (xtr, ytr), (xva, yva), (xte, yte) = _digits()
    torch.manual_seed(0)
    net = NotebookNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):  # a teacher trained the user's way
        for i in range(0, len(xtr), 50):
            loss = nn.functional.cross_entropy(net(xtr[i:i + 50]), ytr[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    own_val = _accuracy(net, xva, yva)
    assert own_val > 0.85

    result = slimtune.search(
        model=net, train=DataLoader(TensorDataset(xtr, ytr), batch_size=100, shuffle=True),
        val=TensorDataset(xva, yva), test=(xte, yte), input_shape=(1, 8, 8), num_classes=10,
        trials=4, epochs=1, run_dir=tmp_path / "run", seed=0)
    run = result.run
    assert result.counts["done"] == 4, [t.user_attrs.get("error") for t in run.study.trials]
    assert run.meta["config"]["model"].startswith("memory:model-")
    assert run.meta["input_shape"] == [1, 8, 8] and run.meta["num_classes"] == 10
    # the teacher is the given model as it is (not retrained), measured through its file
    assert run.teacher["accuracy"] == pytest.approx(own_val, abs=1e-6)

    p = result.front[0]
    path = run.artifact_path(p.trial)
    header = read_header(path)
    assert header.model == run.meta["config"]["model"]  # a name, no module, no code
    student = slimtune.load(path, model=NotebookNet())
    same = slimtune.load(path)  # this session still holds the architecture
    x = xte[:64]
    assert torch.equal(student(x), same(x))
    from slimtune.viz import table_info

    row = table_info(run)[0]  # the report says how to export it: from this session
    assert row.command.startswith(f"slimtune.export({str(run.dir)!r}, {row.trial}, ")
    card = slimtune.export(run.dir, p.trial, tmp_path / "s.slim")
    assert card["test_accuracy"] == pytest.approx(_accuracy(student, xte, yte), abs=1e-6)

    # in another process the name resolves to nothing: the caller passes the architecture
    code = f"import slimtune; slimtune.load({str(path)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "given as a Python object" in r.stderr
    assert "slimtune.load(path, model=MyNet())" in r.stderr


def test_data_objects_become_tensors_and_bad_ones_are_one_line():
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 2
    for obj in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=3)):
        px, py = inmemory.as_pair(obj, "`train`")
        assert torch.equal(px, x) and torch.equal(py, y)
    with pytest.raises(DataError, match="`val` must be a pair"):
        inmemory.as_pair(object(), "`val`")
    with pytest.raises(UnknownNameError, match="torch.nn.Module"):
        inmemory.register_model("not a model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="all three"):
        slimtune.search(model=nn.Linear(2, 2), train=(x, y))
    from slimtune.errors import ConfigError

    pair = (torch.randn(8, 1, 8, 8), torch.arange(8) % 2)
    with pytest.raises(ConfigError, match=r"`input_shape` must match the data, \(1, 8, 8\)"):
        slimtune.search(model=nn.Linear(2, 2), train=pair, val=pair, test=pair,
                        input_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="`num_classes` must match the data's 2 classes"):
        slimtune.search(model=nn.Linear(2, 2), train=pair, val=pair, test=pair,
                        num_classes=10)


def test_a_file_naming_an_object_of_another_session_runs_no_code():
    from slimtune.trust import user_module

    assert user_module("memory:model-0123456789ab") is None  # no module to import
    with pytest.raises(UnknownNameError, match="another session"):
        inmemory.model("memory:model-0123456789ab")


class _Decoding(torch.utils.data.Dataset):
    """A user's Dataset that makes each example when asked (as one reading files would),
    with a random flip: its items differ from one read to the next."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.targets = (x * 255).to(torch.uint8), y
        self.reads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        img = self.x[i].float() / 255
        return (img.flip(-1) if torch.rand(()) < 0.5 else img), int(self.targets[i])


def test_a_users_dataset_streams_and_pairs_stay_tensors():
    from slimtune.data.datasets import load_dataset
    from slimtune.data.split import TensorSplit
    from slimtune.data.stream import DatasetSplit

    (xtr, ytr), (xva, yva), (xte, yte) = _digits()
    train = _Decoding(xtr, ytr)
    name = inmemory.register_data(train, TensorDataset(xva, yva), (xte, yte))
    ds = load_dataset(name)
    assert isinstance(ds.train, DatasetSplit) and isinstance(ds.test, TensorSplit)
    assert ds.train.augments  # a Dataset may vary: the teacher sees every batch
    assert train.reads == 1  # one item for the input shape; the labels came from `targets`
    assert (len(ds.train), ds.num_classes, ds.input_shape) == (1000, 10, (1, 8, 8))
    seen = torch.cat([b.index for b in ds.train.batches(128, shuffle=True,
                                                        generator=torch.Generator())])
    assert sorted(seen.tolist()) == list(range(1000))  # every example once
    val = torch.cat([b.x for b in ds.val.batches(100)])
    assert torch.equal(val, xva)  # a fixed Dataset streams exactly its items
    assert torch.equal(torch.cat([b.y for b in ds.val.head(5).batches(2)]), yva[:5])
    assert len(load_dataset(name, subset=200).train) == 200  # stratified, by the labels
