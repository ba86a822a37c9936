"""A folder of images, streamed: ``imagefolder:PATH`` (or ``imagefolderSIZE:PATH``).

``PATH`` holds ``train/``, ``val/`` and optionally ``test/``, each with one folder per class
of image files (torchvision's ImageFolder layout; class names are the ``train/`` folders,
sorted). Without ``test/``, a stratified tenth of ``train/`` is held out as the test split.
Every image is resized (shorter side) and centre-cropped to ``SIZE`` pixels (default 32),
as grey-scale when the first training image is, else RGB, and normalized per channel with
the mean and deviation of a sample of training images. Training batches get a random crop
(4 pixels of padding) and a horizontal flip.

Only the file list and the labels are held: a :class:`FolderSplit` (a
:class:`~slimtune.data.stream.DatasetSplit` over :class:`ImageFiles`) decodes each batch
when it is asked for, through a torch ``DataLoader`` (worker processes and pinned memory
when the batches go to a GPU), so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtune.data.split import Augment
from slimtune.data.stream import DatasetSplit
from slimtune.errors import DataError

__all__ = ["FolderSplit", "ImageFiles", "load_imagefolder", "parse_name", "is_imagefolder",
           "DEFAULT_IMAGE_SIZE", "IMAGE_SUFFIXES"]

DEFAULT_IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: images read to estimate the per-channel mean and deviation
_STATS_SAMPLE = 256
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


class ImageFiles(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Image files as a map-style dataset: item ``i`` is the normalized image and its
    label."""

    def __init__(self, files: tuple[str, ...], labels: torch.Tensor, size: int,
                 channels: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.files, self.targets = files, labels
        self.size, self.channels, self.mean, self.std = size, channels, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            x = torch.from_numpy(_read(self.files[i], self.size, self.channels))
        except Exception as exc:  # noqa: BLE001 - a broken or unreadable file
            raise DataError(f"cannot read the image {self.files[i]}: {type(exc).__name__}: "
                            f"{exc}") from None
        return (x - self.mean[:, None, None]) / self.std[:, None, None], int(self.targets[i])


@dataclass(frozen=True, eq=False)
class FolderSplit(DatasetSplit):
    """A split of an image folder (:class:`ImageFiles`), read batch by batch."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        d = self.dataset
        return (d.channels, d.size, d.size)

    def fingerprint(self) -> str:
        """A digest of the file names (relative to their common folder), byte sizes and
        labels: cheap (no image is read), and a changed file changes its size or name in
        all but contrived cases."""
        d = self.dataset
        files = [d.files[i] for i in self._positions()]
        h = hashlib.sha256(f"{d.size}:{d.channels}".encode())
        root = os.path.commonpath(files) if files else ""
        for f, label in zip(files, self.y.tolist(), strict=True):
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
    splits = [FolderSplit(ImageFiles(tuple(f), y, size, channels, mean, std), y)
              for f, y in ((tr_files, ys[0]), (va_files, ys[1]), (te_files, ys[2]))]
    splits[0] = replace(splits[0], augment=crop_flip)
    return splits[0], splits[1], splits[2], len(classes)
