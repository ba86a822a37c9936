"""A folder of images, streamed: ``imagefolder:PATH`` (or ``imagefolderSIZE:PATH``).

``PATH`` holds ``train/``, ``val/`` and optionally ``test/``, each with one folder per class
of image files (torchvision's ImageFolder layout; class names are the ``train/`` folders,
sorted). Without ``test/``, a stratified tenth of ``train/`` is held out as the test split.
Every image is resized (shorter side) and centre-cropped to ``SIZE`` pixels (default 32),
as grey-scale when the first training image is, else RGB, and normalized per channel with
the mean and deviation of a sample of training images. Training batches get a random crop
(4 pixels of padding) and a horizontal flip.

Only the file list and the labels are held: a :class:`FolderSplit` decodes each batch
when it is asked for, through a torch ``DataLoader`` (worker processes and pinned memory
when the batches go to a GPU), so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtune.data.split import Augment, Batch
from slimtune.errors import DataError

__all__ = ["FolderSplit", "load_imagefolder", "parse_name", "is_imagefolder",
           "DEFAULT_IMAGE_SIZE", "IMAGE_SUFFIXES"]

DEFAULT_IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: images read to estimate the per-channel mean and deviation
_STATS_SAMPLE = 256
#: DataLoader worker processes when batches go to a GPU (on a CPU the trial's own thread
#: decodes: its CPUs are the trial's, and more processes would only compete for them)
GPU_LOADER_WORKERS = 2
_NAME = re.compile(r"imagefolder(\d*):(.+)", re.S)


def is_imagefolder(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def parse_name(name: str) -> tuple[Path, int]:
    """(root, image size) of ``imagefolder:PATH`` / ``imagefolderSIZE:PATH``."""
    m = _NAME.fullmatch(name)
    if m is None:
        raise DataError(f"`{name}` is not `imagefolder:PATH` or `imagefolderSIZE:PATH`")
    size = int(m.group(1)) if m.group(1) else DEFAULT_IMAGE_SIZE
    if not 4 <= size <= 1024:
        raise DataError(f"the image size of `{name}` must be between 4 and 1024 pixels, but "
                        f"got {size}")
    return Path(m.group(2)), size


def _read(path: str, size: int, channels: int) -> np.ndarray:
    """One image: resized so its shorter side is ``size``, centre-cropped to a square, as
    float32 in [0, 1], channels first."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


class _Items(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The images of ``split`` in the order ``order`` (a DataLoader's dataset)."""

    def __init__(self, split: FolderSplit, order: torch.Tensor) -> None:
        self.split, self.order = split, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, k = self.split, int(self.order[i])
        try:
            x = torch.from_numpy(_read(s.files[k], s.size, s.channels))
        except Exception as exc:  # noqa: BLE001 - a broken or unreadable file
            raise DataError(f"cannot read the image {s.files[k]}: {type(exc).__name__}: "
                            f"{exc}") from None
        return (x - s.mean[:, None, None]) / s.std[:, None, None], torch.tensor(k)


@dataclass(frozen=True, eq=False)
class FolderSplit:
    """A split of image files read batch by batch (the :class:`~slimtune.data.split.Split`
    contract); ``y`` holds the labels, the only per-example data kept in memory."""

    files: tuple[str, ...]
    y: torch.Tensor  # int64 labels
    size: int
    channels: int
    mean: torch.Tensor  # per channel
    std: torch.Tensor
    augment: Augment | None = None
    device: str = "cpu"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    @property
    def augments(self) -> bool:
        return self.augment is not None

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: bool = False
                ) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        gpu = self.device.startswith("cuda")
        loader = torch.utils.data.DataLoader(
            _Items(self, order), batch_size=batch_size, shuffle=False,
            num_workers=GPU_LOADER_WORKERS if gpu else 0, pin_memory=gpu)
        for x, index in loader:
            x = x.to(self.device, non_blocking=gpu)
            if augment and self.augment is not None:
                x = self.augment(x, generator)
            index = index.to(self.device)
            yield Batch(x, self.y.to(self.device)[index], index)

    def to(self, device: torch.device | str) -> FolderSplit:
        return replace(self, device=str(device))

    def head(self, n: int) -> FolderSplit:
        return replace(self, files=self.files[:n], y=self.y[:n])

    def take(self, index: torch.Tensor) -> FolderSplit:
        """The examples at ``index`` (a subset), in that order."""
        return replace(self, files=tuple(self.files[int(i)] for i in index), y=self.y[index])

    def fingerprint(self) -> str:
        """A digest of the file names (relative to their common folder), byte sizes and
        labels: cheap (no image is read), and a changed file changes its size or name in
        all but contrived cases."""
        h = hashlib.sha256(f"{self.size}:{self.channels}".encode())
        root = os.path.commonpath(self.files) if self.files else ""
        for f, label in zip(self.files, self.y.tolist(), strict=True):
            h.update(f"{os.path.relpath(f, root)}\0{os.path.getsize(f)}\0{label}\n".encode())
        return h.hexdigest()[:16]


def _scan(folder: Path, classes: list[str] | None, what: str
          ) -> tuple[list[str], list[int], list[str]]:
    """The image files of ``folder``'s class folders, their labels and the class names."""
    if not folder.is_dir():
        raise DataError(f"{what}: no folder {folder} (an image folder holds train/, val/ "
                        "and optionally test/, each with one folder of images per class)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f"{what}: {folder} has class folder `{unknown[0]}`, which train/ "
                        f"does not have")
    files, labels = [], []
    for k, c in enumerate(classes):
        d = folder / c
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(str(f.resolve()))
                labels.append(k)
    if not files:
        raise DataError(f"{what}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                        "in class folders")
    return files, labels, classes


def _stats(files: list[str], size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and deviation of up to :data:`_STATS_SAMPLE` training images
    (a seeded sample)."""
    pick = np.random.default_rng(0).permutation(len(files))[:_STATS_SAMPLE]
    x = np.stack([_read(files[i], size, channels) for i in pick])
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return torch.from_numpy(mean), torch.from_numpy(np.maximum(std, 1e-3))


def load_imagefolder(name: str, check: Any, crop_flip: Augment) -> tuple[Any, ...]:
    """(train, val, test, classes) of the image folder ``name``. ``check(what, splits)``
    applies the data sets' checks (labels, classes with two training examples)."""
    from PIL import Image

    root, size = parse_name(name)
    what = f"the image folder `{name}`"
    if not root.is_dir():
        raise DataError(f"{what}: {root} is not a directory")
    tr_files, tr_y, classes = _scan(root / "train", None, what)
    va_files, va_y, _ = _scan(root / "val", classes, what)
    if (root / "test").is_dir():
        te_files, te_y, _ = _scan(root / "test", classes, what)
    else:  # a stratified tenth of train/ becomes the test split
        from sklearn.model_selection import train_test_split

        keep, held = train_test_split(np.arange(len(tr_files)), test_size=0.1,
                                      stratify=np.asarray(tr_y), random_state=0)
        keep, held = np.sort(keep), np.sort(held)
        te_files, te_y = [tr_files[i] for i in held], [tr_y[i] for i in held]
        tr_files, tr_y = [tr_files[i] for i in keep], [tr_y[i] for i in keep]
    try:
        with Image.open(tr_files[0]) as im:
            channels = 1 if im.mode in ("1", "L", "I;16", "I", "F") else 3
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{what}: cannot read {tr_files[0]}: {exc}") from None
    ys = [torch.tensor(y, dtype=torch.int64) for y in (tr_y, va_y, te_y)]
    check(what, [("its train split", tr_files, ys[0]), ("its val split", va_files, ys[1]),
                 ("its test split", te_files, ys[2])])
    mean, std = _stats(tr_files, size, channels)
    splits = [FolderSplit(tuple(f), y, size, channels, mean, std)
              for f, y in ((tr_files, ys[0]), (va_files, ys[1]), (te_files, ys[2]))]
    splits[0] = replace(splits[0], augment=crop_flip)
    return splits[0], splits[1], splits[2], len(classes)
