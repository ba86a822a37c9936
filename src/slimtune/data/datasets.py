"""Datasets, each split deterministically into train / validation / test splits.

The validation split is carved from the training data with a fixed seed and is the only
split the search reads; the test split is read for reports and export only.

Built-in names: ``digits`` (scikit-learn, bundled), ``fashion-mnist`` and ``mnist`` (IDX
files, read with bounded work by :mod:`slimtune.data.idx`), ``cifar10`` (the python
batches, read by :mod:`slimtune.data.cifar` with a restricted unpickler), and
``module:function`` for user code returning the three splits. Nothing is downloaded.

Input is checked, not trusted: a ``module:function`` name from a file is imported only
through :mod:`slimtune.trust`; splits that cannot work (an empty split, labels and
images that differ in number, labels that are not classes 0..K-1, a class with fewer than
2 training examples) and a ``subset`` too small to hold every class are refused with one
:class:`DataError` or :class:`ConfigError` line that names the file or argument, the rule
and the value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtune import inmemory
from slimtune.data.cifar import CIFAR_FILES, read_batches
from slimtune.data.folder import is_imagefolder, load_imagefolder
from slimtune.data.idx import read_idx
from slimtune.data.split import Augment, Split, TensorSplit
from slimtune.data.stream import DatasetSplit, labels_of
from slimtune.errors import ConfigError, DataError, UnknownNameError
from slimtune.trust import NO_TRUST, Trust, check, resolve

__all__ = ["Splits", "DATASETS", "load_dataset", "SPLIT_SEED", "FASHION_MNIST_DIR",
           "read_idx", "crop_flip", "Split", "TensorSplit"]

#: the split never depends on the search seed, so every run of one dataset compares alike
SPLIT_SEED = 0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
VAL_FRACTION = 0.1  # of the training data, for the IDX and CIFAR data sets


def _tensors_of(which: str, part: str) -> property:
    """``x_<which>`` / ``y_<which>``: a tensor split's inputs or labels (the older form)."""
    def get(self: Splits) -> torch.Tensor:
        split = getattr(self, which)
        if not isinstance(split, TensorSplit):
            raise AttributeError(f"`{part}_{which}` needs a split held as tensors, but the "
                                 f"{which} split of `{self.name}` is a "
                                 f"{type(split).__name__}; read `.{which}.batches(...)`")
        return getattr(split, part)
    return property(get, doc=f"The {which} split's {'inputs' if part == 'x' else 'labels'}.")


@dataclass
class Splits:
    """The train, validation and test :class:`~slimtune.data.split.Split` of a data set,
    plus what a model needs to know.

    ``augment`` names the training-time augmentation (``"crop_flip"`` for CIFAR-10: random
    crop with 4 pixels of padding and a horizontal flip), applied per batch on the device
    by ``train.batches(augment=True)``. ``x_train``, ``y_train``, ... are the tensors of
    splits held in memory, for older callers; code above ``data/`` reads batches.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    augment: str | None = None

    x_train = _tensors_of("train", "x")
    y_train = _tensors_of("train", "y")
    x_val = _tensors_of("val", "x")
    y_val = _tensors_of("val", "y")
    x_test = _tensors_of("test", "x")
    y_test = _tensors_of("test", "y")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    def split(self, which: str) -> Split:
        if which not in ("train", "val", "test"):
            raise UnknownNameError(f"unknown split `{which}`; choose train, val or test")
        return getattr(self, which)

    def to(self, device: torch.device | str) -> Splits:
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device))

    def augment_batch(self, x: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """The training augmentation of this data set applied to one batch (or ``x``)."""
        fn = _augmentation(self.augment)
        return x if fn is None else fn(x, generator)


def _augmentation(name: str | None) -> Augment | None:
    """The augmentation ``name`` names (None: none)."""
    return _crop_flip_4 if name == "crop_flip" else None


def _crop_flip_4(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return crop_flip(x, pad=4, generator=generator)


def _tensor_splits(name: str, train: tuple[torch.Tensor, torch.Tensor],
                   val: tuple[torch.Tensor, torch.Tensor],
                   test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                   augment: str | None = None) -> Splits:
    """:class:`Splits` held as tensors, the training split augmented by ``augment``."""
    return Splits(name, TensorSplit(*train, augment=_augmentation(augment)),
                  TensorSplit(*val), TensorSplit(*test), num_classes, augment)


def crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Random crop of each image from its zero-padded copy, then a random horizontal flip."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[torch.arange(b, device=x.device)[:, None, None, None], chans, rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _stratified_split(y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    keep, held = train_test_split(idx, test_size=fraction, stratify=y, random_state=SPLIT_SEED)
    return np.sort(keep), np.sort(held)


def _normalized(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
    y_test: np.ndarray, num_classes: int, augment: str | None = None,
) -> Splits:
    """Carve validation from train, normalize per channel with train statistics."""
    tr, va = _stratified_split(y_train, VAL_FRACTION)
    xt = torch.from_numpy(x_train.astype(np.float32))
    axes = (0, 2, 3)
    mean = xt[tr].mean(dim=axes, keepdim=True)
    std = xt[tr].std(dim=axes, keepdim=True).clamp_min(1e-6)
    norm = (xt - mean) / std
    xtest = (torch.from_numpy(x_test.astype(np.float32)) - mean) / std
    yt = torch.from_numpy(y_train.astype(np.int64))
    return _tensor_splits(name, (norm[tr], yt[tr]), (norm[va], yt[va]),
                          (xtest, torch.from_numpy(y_test.astype(np.int64))), num_classes,
                          augment)


# -- digits ---------------------------------------------------------------------------
def _load_digits(data_dir: Path | None) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0  # 8x8 grey levels 0..16 -> 0..1
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    # 20 % test, then 15 % of the whole set as validation, stratified, fixed seed
    trval, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=SPLIT_SEED)
    train, val = train_test_split(
        trval, test_size=0.1875, stratify=y[trval], random_state=SPLIT_SEED
    )
    mean, std = x[train].mean(), x[train].std()
    xt = torch.from_numpy((x - mean) / std).unsqueeze(1)  # N x 1 x 8 x 8
    yt = torch.from_numpy(y)
    return _tensor_splits("digits", (xt[train], yt[train]), (xt[val], yt[val]),
                          (xt[test], yt[test]), num_classes=10)


# -- checks every loaded set passes ----------------------------------------------------
#: a split to check: what to call it in a message, its images (or anything with a length)
#: and its labels
_Split = tuple[str, Any, Any]


def _check_splits(what: str, splits: Sequence[_Split], *, carve_val: bool,
                  num_classes: int | None = None) -> int:
    """Refuse splits a run cannot use and return the number of classes K.

    ``splits`` starts with the training split. Each split must hold at least one example
    and as many labels as images; labels must be classes 0..K-1 (K is ``num_classes`` or
    the largest label plus one), every one of which has at least 2 training examples (the
    stratified validation split and subsets draw from each class). With ``carve_val`` the
    training split must also be large enough to carve a validation split holding every
    class. ``what`` names the data set and where it came from.
    """
    labels = []
    for label, x, y in splits:
        y = y.numpy(force=True) if isinstance(y, torch.Tensor) else np.asarray(y)
        if len(y) == 0:
            raise DataError(f"{what}: {label} has 0 examples")
        if len(x) != len(y):
            raise DataError(f"{what}: {label} has {len(x)} images but {len(y)} labels; "
                            f"each image needs one label")
        labels.append(y.astype(np.int64, copy=False))
    lowest = min(int(y.min()) for y in labels)
    highest = max(int(y.max()) for y in labels)
    k = num_classes if num_classes is not None else highest + 1
    if lowest < 0 or highest >= k:
        bad = lowest if lowest < 0 else highest
        raise DataError(f"{what}: labels must be classes 0..{k - 1}, but one is {bad}")
    _check_classes(what, splits[0][0], labels[0], k)
    if carve_val:
        _check_carve(what, splits[0][0], len(labels[0]), k)
    return k


def _check_classes(what: str, train: str, y: np.ndarray, k: int) -> None:
    """Every class 0..k-1 has at least 2 examples in the training labels ``y``."""
    classes, counts = np.unique(y, return_counts=True)  # no array of size k: k may be huge
    if len(classes) < k:  # some class is missing: the first one not in place
        c = next((i for i, v in enumerate(classes) if v != i), len(classes))
        n = 0
    else:
        thin = np.flatnonzero(counts < 2)
        if not thin.size:
            return
        c, n = int(classes[thin[0]]), int(counts[thin[0]])
    raise DataError(f"{what}: class {c} has {n} training example{'s' * (n != 1)} in {train}; "
                    f"every class 0..{k - 1} needs at least 2 (stratified splits and "
                    f"subsets draw from each class)")


def _check_carve(what: str, train: str, n: int, k: int) -> None:
    """``n`` training examples leave a validation split of ``VAL_FRACTION`` and a
    training split that both hold all ``k`` classes (else sklearn's split would raise)."""
    def fits(m: int) -> bool:
        held = math.ceil(VAL_FRACTION * m)
        return held >= k and m - held >= k

    if not fits(n):
        least = next(m for m in range(2 * k, 100 * k + 100) if fits(m))
        raise DataError(f"{what}: {train} has {n} examples, too few for a "
                        f"{VAL_FRACTION:.0%} validation split holding all {k} classes; it "
                        f"needs at least {least}")


# -- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find(data_dir: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def _load_idx(name: str, data_dir: Path | None, default: Path | None, hint: str) -> Splits:
    d = Path(data_dir) if data_dir else default
    if d is None:
        raise DataError(f"`{name}` needs --data-dir: a directory with "
                        f"{', '.join(f + '.gz' for f in IDX_FILES)} ({hint})")
    paths = [_find(d, f) for f in IDX_FILES]
    if not d.is_dir() or None in paths:
        missing = [f + ".gz" for f, p in zip(IDX_FILES, paths, strict=True) if p is None]
        raise DataError(f"`{name}` files missing in {d}: {', '.join(missing)} ({hint})")
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    what = f"`{name}` in {d}"
    for path, arr, ndim, shape in zip(paths, (xtr, ytr, xte, yte), (3, 1, 3, 1),
                                      ("N x rows x columns images", "N labels") * 2,
                                      strict=True):
        if arr.ndim != ndim:
            raise DataError(f"{path} must hold {shape}, but holds an array of shape "
                            f"{arr.shape}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{what}: the training images are {xtr.shape[1]} x {xtr.shape[2]} "
                        f"but the test images {xte.shape[1]} x {xte.shape[2]}; they must match")
    files = [p.name for p in paths]  # type: ignore[union-attr]
    classes = _check_splits(what, [
        (f"the training files ({files[0]}, {files[1]})", xtr, ytr),
        (f"the test files ({files[2]}, {files[3]})", xte, yte),
    ], carve_val=True)
    return _normalized(name, xtr[:, None] / 255.0, ytr, xte[:, None] / 255.0, yte, classes)


def _load_fashion(data_dir: Path | None) -> Splits:
    return _load_idx("fashion-mnist", data_dir, FASHION_MNIST_DIR,
                     "on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, which puts "
                     f"them in {FASHION_MNIST_DIR}")


def _load_mnist(data_dir: Path | None) -> Splits:
    return _load_idx("mnist", data_dir, None,
                     "the standard MNIST files from the MNIST database; slimtune never "
                     "downloads data")


# -- CIFAR-10 -------------------------------------------------------------------------
def _load_cifar10(data_dir: Path | None) -> Splits:
    hint = ("the python version of CIFAR-10 (cifar-10-python.tar.gz, unpacked); slimtune "
            "never downloads data")
    if data_dir is None:
        raise DataError(f"`cifar10` needs --data-dir: the directory holding "
                        f"cifar-10-batches-py/ ({hint})")
    d = Path(data_dir)
    batches = d if d.name == "cifar-10-batches-py" else d / "cifar-10-batches-py"
    missing = [f for f in CIFAR_FILES if not (batches / f).is_file()]
    if missing:
        raise DataError(f"`cifar10` files missing in {batches}: {', '.join(missing)} ({hint})")
    xtr, ytr, xte, yte = read_batches(batches)
    _check_splits(f"`cifar10` in {batches}", [
        ("the training batches (data_batch_1..5)", xtr, ytr),
        ("the test batch (test_batch)", xte, yte),
    ], carve_val=True, num_classes=10)
    return _normalized("cifar10", xtr / 255.0, ytr, xte / 255.0, yte, 10,
                       augment="crop_flip")


# -- user code ------------------------------------------------------------------------
def _as_tensors(obj: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = obj
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{what} must be a pair (x, y) of arrays or tensors: {exc}") from None
    if y.is_floating_point() and not bool(torch.all(y == y.round())):
        raise DataError(f"{what}: labels must be whole class numbers 0..K-1, but some are "
                        f"fractions (dtype {y.dtype})")
    if y.is_complex() or y.ndim != 1 or x.ndim < 2:
        raise DataError(f"{what}: x must be N x ... and y of length N, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    return x, y.to(torch.int64)


def _load_user(spec: str, data_dir: Path | None) -> Splits:
    """A ``module:function`` data set; its module's trust was checked by the caller."""
    fn: Any = resolve(spec, "data set", NO_TRUST, source=None)
    try:
        out = fn(data_dir) if data_dir is not None else fn()
        train, val, test = out
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"dataset function `{spec}` failed or did not return "
                        f"(train, val, test): {type(exc).__name__}: {exc}") from None
    return _user_splits(spec, train, val, test)


def _user_splits(spec: str, train: Any, val: Any, test: Any) -> Splits:
    """The user's three ``(x, y)`` splits (of ``module:function`` or Python objects),
    checked and held as they are (not normalized: the user's model was trained on them)."""
    (xtr, ytr), (xva, yva), (xte, yte) = (
        _as_tensors(s, f"`{spec}` {n}") for s, n in ((train, "train"), (val, "val"), (test, "test"))
    )
    if not xtr.shape[1:] == xva.shape[1:] == xte.shape[1:]:
        raise DataError(f"data set `{spec}`: every split must have inputs of one shape, but "
                        f"train has {tuple(xtr.shape[1:])}, val {tuple(xva.shape[1:])} and "
                        f"test {tuple(xte.shape[1:])}")
    classes = _check_splits(f"data set `{spec}`", [
        ("its train split", xtr, ytr), ("its val split", xva, yva),
        ("its test split", xte, yte),
    ], carve_val=False)
    return _tensor_splits(spec, (xtr, ytr), (xva, yva), (xte, yte), num_classes=classes)


def _dataset_splits(name: str, *parts: Any) -> Splits:
    """Splits given as torch Datasets (streamed) or pairs of tensors (held)."""
    splits = []
    for part, label in zip(parts, ("train", "val", "test"), strict=True):
        if isinstance(part, tuple):
            splits.append(TensorSplit(*_as_tensors(part, f"`{label}`")))
        else:
            splits.append(DatasetSplit(part, labels_of(part, f"the `{label}` Dataset"),
                                       varies=True))
    if not splits[0].input_shape == splits[1].input_shape == splits[2].input_shape:
        raise DataError(f"every split must have inputs of one shape, but train has "
                        f"{splits[0].input_shape}, val {splits[1].input_shape} and test "
                        f"{splits[2].input_shape}")
    k = _check_splits("the data set given in Python", [
        (f"its {label} split", range(len(s)), s.y)
        for s, label in zip(splits, ("train", "val", "test"), strict=True)], carve_val=False)
    return Splits(name, splits[0], splits[1], splits[2], k)


DATASETS: dict[str, Callable[[Path | None], Splits]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
}


# -- subsets --------------------------------------------------------------------------
def _check_subset(s: Splits, subset: int | None, val_subset: int | None) -> None:
    """A subset's validation and test quarters (and ``val_subset``) must be able to hold
    one example of every class."""
    k = s.num_classes
    if subset is not None and subset // 4 < k:
        raise ConfigError(f"`--subset` must be at least {4 * k} (4 x the {k} classes of "
                          f"`{s.name}`), but got {subset}")
    if val_subset is not None and val_subset < k:
        raise ConfigError(f"`--val-subset` must be at least {k} (the {k} classes of "
                          f"`{s.name}`), but got {val_subset}")


def _pick(y: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of ``k`` of the labels ``y``, stratified, with a fixed seed."""
    from sklearn.model_selection import train_test_split

    labels = y.numpy(force=True)
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2 and min(k, len(labels) - k) >= len(counts):
        idx, _ = train_test_split(np.arange(len(labels)), train_size=k,
                                  random_state=SPLIT_SEED, stratify=labels)
    else:  # too few of some class for sklearn: take the classes in turn, seeded order
        order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
        rank = np.empty(len(labels), dtype=np.int64)  # place of each example in its class
        for c in np.unique(labels):
            in_c = labels[order] == c
            rank[in_c] = np.arange(int(in_c.sum()))
        idx = order[np.argsort(rank, kind="stable")[:k]]
    return torch.from_numpy(np.sort(idx))


def _subset(s: Splits, n: int | None, n_val: int | None = None) -> Splits:
    """At most ``n`` training examples and ``n // 4`` test ones, and at most ``n_val``
    validation ones (``n // 4`` when not given), stratified."""
    def pick(split: Split, k: int | None) -> Split:
        if k is None or k >= len(split):  # None: all of it
            return split
        if not hasattr(split, "take"):
            raise ConfigError(f"`--subset` needs splits that can take a subset, but "
                              f"`{s.name}` gives a {type(split).__name__}")
        return split.take(_pick(split.y, k))

    quarter = max(1, n // 4) if n else None
    return replace(s, train=pick(s.train, n), val=pick(s.val, n_val or quarter),
                   test=pick(s.test, quarter))


# -- loading --------------------------------------------------------------------------
def _load(name: str, data_dir: Path | None) -> Splits:
    if inmemory.is_memory(name):  # splits given as Python objects
        parts = inmemory.data(name)
        if any(not isinstance(p, tuple) for p in parts):
            return _dataset_splits(name, *parts)
        return _user_splits(name, *parts)
    if is_imagefolder(name):  # image files, streamed batch by batch
        train, val, test, k = load_imagefolder(
            name, lambda what, splits: _check_splits(what, splits, carve_val=False),
            _augmentation("crop_flip"))
        return Splits(name, train, val, test, k, "crop_flip")
    if ":" in name:
        return _load_user(name, data_dir)
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset `{name}`; choose one of: {', '.join(sorted(DATASETS))}, "
            "or module:function"
        ) from None
    return loader(data_dir)


@functools.lru_cache(maxsize=4)  # one load per process (Ray workers run many trials)
def _cached(name: str, data_dir: str | None, subset: int | None,
            val_subset: int | None = None) -> Splits:
    splits = _load(name, Path(data_dir) if data_dir else None)
    if not (subset or val_subset):
        return splits
    _check_subset(splits, subset, val_subset)
    return _subset(splits, subset, val_subset)


def load_dataset(name: str, data_dir: str | Path | None = None, subset: int | None = None,
                 val_subset: int | None = None, *, trust: Trust = NO_TRUST,
                 source: str | None = None) -> Splits:
    """Load a data set by name (or ``module:function``), optionally a stratified subset:
    at most ``subset`` training examples and ``subset // 4`` test ones, and at most
    ``val_subset`` validation ones (by default ``subset // 4``).

    ``source`` says where ``name`` was read (``"the model card m.json"``): a
    ``module:function`` name from a source is imported only if ``trust`` allows its
    module (:mod:`slimtune.trust`); ``source=None`` means the caller named it itself.
    The check runs on every call, before the per-process cache is consulted.
    """
    if name.startswith("torchvision:"):
        raise UnknownNameError(f"unknown dataset `{name}`: torchvision data sets are not "
                               f"supported (slimtune never downloads data); choose one of: "
                               f"{', '.join(sorted(DATASETS))}, or module:function")
    check(name, "data set", trust, source)
    if subset is not None and subset < 1:
        raise ConfigError(f"`--subset` must be at least 1, but got {subset}")
    if val_subset is not None and val_subset < 1:
        raise ConfigError(f"`--val-subset` must be at least 1, but got {val_subset}")
    s = _cached(name, str(data_dir) if data_dir else None, subset, val_subset)
    return replace(s)  # a shallow copy: callers may rebind fields, splits are shared
