"""Datasets, each split deterministically into train / validation / test tensors.

The validation split is carved from the training data with a fixed seed and is the only
split the search reads; the test split is read for reports and export only.

Built-in names: ``digits`` (scikit-learn, bundled), ``fashion-mnist`` and ``mnist`` (IDX
files), ``cifar10`` (the python batches, read with torchvision, never downloaded), and
``module:function`` for user code returning the three splits.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtune.errors import ConfigError, DataError, UnknownNameError, import_object

__all__ = ["Splits", "DATASETS", "load_dataset", "SPLIT_SEED", "FASHION_MNIST_DIR"]

#: the split never depends on the search seed, so every run of one dataset compares alike
SPLIT_SEED = 0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
VAL_FRACTION = 0.1  # of the training data, for the IDX and CIFAR data sets


@dataclass
class Splits:
    """Tensors ``(x, y)`` for each split, plus what a model needs to know.

    ``augment`` names the training-time augmentation (``"crop_flip"`` for CIFAR-10: random
    crop with 4 pixels of padding and a horizontal flip), applied per batch on the device.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which not in ("train", "val", "test"):
            raise UnknownNameError(f"unknown split `{which}`; choose train, val or test")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def to(self, device: torch.device | str) -> Splits:
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()
        }
        return Splits(**moved)

    def augment_batch(self, x: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """The training augmentation of this data set applied to one batch (or ``x``)."""
        if self.augment == "crop_flip":
            return crop_flip(x, pad=4, generator=generator)
        return x


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
    return Splits(
        name=name, x_train=norm[tr], y_train=yt[tr], x_val=norm[va], y_val=yt[va],
        x_test=xtest, y_test=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=num_classes, augment=augment,
    )


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
    return Splits(
        name="digits",
        x_train=xt[train], y_train=yt[train],
        x_val=xt[val], y_val=yt[val],
        x_test=xt[test], y_test=yt[test],
        num_classes=10,
    )


# -- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw) as a numpy array; :class:`DataError` if malformed."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack_from(">HBB", raw, 0)
        if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack_from(f">{ndim}I", raw, 4)
        start = 4 + 4 * ndim
        count = int(np.prod(dims))
        if len(raw) - start != count:
            raise ValueError(f"expected {count} values after the header, found {len(raw) - start}")
        return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"{path} is not a valid IDX file: {exc}") from None


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
    if xtr.ndim != 3 or xte.ndim != 3 or ytr.ndim != 1 or yte.ndim != 1 \
            or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"`{name}` files in {d} have inconsistent shapes: images "
                        f"{xtr.shape} / {xte.shape}, labels {ytr.shape} / {yte.shape}")
    classes = int(max(ytr.max(), yte.max())) + 1
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
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the numpy pieces that CIFAR-10's batches are made of."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _check_cifar_batch(path: Path) -> None:
    """Check a batch before torchvision unpickles it: plain data only, the expected keys."""
    try:
        with open(path, "rb") as f:
            doc = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        if not isinstance(doc, dict) or "data" not in doc or not (
                "labels" in doc or "fine_labels" in doc):
            raise ValueError("no `data` / `labels` entries")
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a batch
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None


def _load_cifar10(data_dir: Path | None) -> Splits:
    from torchvision.datasets import CIFAR10

    hint = ("the python version of CIFAR-10 (cifar-10-python.tar.gz, unpacked); slimtune "
            "never downloads data")
    if data_dir is None:
        raise DataError(f"`cifar10` needs --data-dir: the directory holding "
                        f"cifar-10-batches-py/ ({hint})")
    d = Path(data_dir)
    root = d.parent if d.name == "cifar-10-batches-py" else d
    batches = root / "cifar-10-batches-py"
    missing = [f for f in _CIFAR_FILES if not (batches / f).is_file()]
    if missing:
        raise DataError(f"`cifar10` files missing in {batches}: {', '.join(missing)} ({hint})")
    for f in _CIFAR_FILES:
        _check_cifar_batch(batches / f)
    if (batches / "batches.meta").is_file():
        try:
            with open(batches / "batches.meta", "rb") as fh:
                _NumpyOnlyUnpickler(fh, encoding="latin1").load()
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{batches / 'batches.meta'} is not a CIFAR-10 meta file: {exc}"
                            ) from None

    class _LocalCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:  # files checked above; no md5 of the originals
            return True

        def _load_meta(self) -> None:  # class names only; batches.meta is optional
            meta = batches / "batches.meta"
            names = [str(i) for i in range(10)]
            if meta.is_file():
                with open(meta, "rb") as f:
                    doc = _NumpyOnlyUnpickler(f, encoding="latin1").load()
                names = list(doc.get("label_names", names))
            self.classes = names
            self.class_to_idx = {c: i for i, c in enumerate(names)}

    try:
        train = _LocalCIFAR10(str(root), train=True, download=False)
        test = _LocalCIFAR10(str(root), train=False, download=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read CIFAR-10 from {batches}: {exc}") from None
    xtr = np.asarray(train.data).transpose(0, 3, 1, 2) / 255.0  # N x 3 x 32 x 32
    xte = np.asarray(test.data).transpose(0, 3, 1, 2) / 255.0
    return _normalized("cifar10", xtr, np.asarray(train.targets), xte,
                       np.asarray(test.targets), 10, augment="crop_flip")


# -- user code ------------------------------------------------------------------------
def _as_tensors(obj: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = obj
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y, dtype=torch.int64)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{what} must be a pair (x, y) of arrays or tensors: {exc}") from None
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise DataError(f"{what}: x must be N x ... and y of length N, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    return x, y


def _load_user(spec: str, data_dir: Path | None) -> Splits:
    fn: Any = import_object(spec, "dataset")
    try:
        out = fn(data_dir) if data_dir is not None else fn()
        train, val, test = out
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"dataset function `{spec}` failed or did not return "
                        f"(train, val, test): {type(exc).__name__}: {exc}") from None
    (xtr, ytr), (xva, yva), (xte, yte) = (
        _as_tensors(s, f"`{spec}` {n}") for s, n in ((train, "train"), (val, "val"), (test, "test"))
    )
    classes = int(max(int(ytr.max()), int(yva.max()), int(yte.max()))) + 1
    return Splits(spec, xtr, ytr, xva, yva, xte, yte, num_classes=classes)


DATASETS: dict[str, Callable[[Path | None], Splits]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
}


def _subset(s: Splits, n: int | None, n_val: int | None = None) -> Splits:
    """At most ``n`` training examples and ``n // 4`` test ones, and at most ``n_val``
    validation ones (``n // 4`` when not given), stratified."""
    def pick(x: torch.Tensor, y: torch.Tensor, k: int | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        if k is None or k >= len(y):  # None: all of it
            return x, y
        from sklearn.model_selection import train_test_split

        idx, _ = train_test_split(np.arange(len(y)), train_size=k, random_state=SPLIT_SEED,
                                  stratify=y.numpy() if k >= s.num_classes else None)
        idx = torch.from_numpy(np.sort(idx))
        return x[idx], y[idx]

    quarter = max(1, n // 4) if n else None
    xtr, ytr = pick(s.x_train, s.y_train, n)
    xva, yva = pick(s.x_val, s.y_val, n_val or quarter)
    xte, yte = pick(s.x_test, s.y_test, quarter)
    return replace(s, x_train=xtr, y_train=ytr, x_val=xva, y_val=yva, x_test=xte, y_test=yte)


@functools.lru_cache(maxsize=4)  # one load per process (Ray workers run many trials)
def _cached(name: str, data_dir: str | None, subset: int | None,
            val_subset: int | None = None) -> Splits:
    d = Path(data_dir) if data_dir else None
    if ":" in name:
        splits = _load_user(name, d)
    else:
        try:
            loader = DATASETS[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown dataset `{name}`; choose one of: {', '.join(sorted(DATASETS))}, "
                "or module:function"
            ) from None
        splits = loader(d)
    return _subset(splits, subset, val_subset) if subset or val_subset else splits


def load_dataset(name: str, data_dir: str | Path | None = None, subset: int | None = None,
                 val_subset: int | None = None) -> Splits:
    """Load a data set by name (or ``module:function``), optionally a stratified subset:
    at most ``subset`` training examples and ``subset // 4`` test ones, and at most
    ``val_subset`` validation ones (by default ``subset // 4``)."""
    if subset is not None and subset < 1:
        raise ConfigError(f"`--subset` must be at least 1, but got {subset}")
    if val_subset is not None and val_subset < 1:
        raise ConfigError(f"`--val-subset` must be at least 1, but got {val_subset}")
    s = _cached(name, str(data_dir) if data_dir else None, subset, val_subset)
    return replace(s)  # a shallow copy: callers may rebind fields, tensors are shared
