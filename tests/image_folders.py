"""Image folders of real pictures for the tests and benchmarks: Fashion-MNIST images
(Debian's dataset-fashion-mnist) written as 32x32 PNG files in torchvision's ImageFolder
layout (``train/``, ``val/``, optionally ``test/``, a folder per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimtune.data.datasets import FASHION_MNIST_DIR
from slimtune.data.idx import read_idx

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot"]


def have_fashion_mnist() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def write_image_folder(root: Path, train: int, val: int, test: int = 0,
                       size: int = 32, offset: int = 0) -> Path:
    """``train`` / ``val`` / ``test`` images (the first of Fashion-MNIST's training set
    from ``offset``, so every class appears) as PNG files under ``root``."""
    from PIL import Image

    x = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    y = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    start = offset
    for split, n in (("train", train), ("val", val), ("test", test)):
        for i in range(start, start + n):
            d = root / split / CLASSES[int(y[i])]
            d.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(np.asarray(x[i], dtype=np.uint8), mode="L")
            im.resize((size, size), Image.Resampling.BILINEAR).save(d / f"{i:06d}.png")
        start += n
    return root
