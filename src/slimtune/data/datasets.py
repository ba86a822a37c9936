"""Built-in datasets, each split deterministically into train / validation / test.

The validation split is carved from the training data and is the only split the search
reads; the test split is read for reports and export only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from slimtune.errors import UnknownNameError

__all__ = ["Splits", "DATASETS", "load_dataset", "SPLIT_SEED"]

#: the split never depends on the search seed, so every run of one dataset compares alike
SPLIT_SEED = 0


@dataclass
class Splits:
    """Tensors ``(x, y)`` for each split, plus what a model needs to know."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

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


def _load_digits() -> Splits:
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


DATASETS: dict[str, Callable[[], Splits]] = {"digits": _load_digits}


def load_dataset(name: str) -> Splits:
    """Load a built-in dataset by name."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset `{name}`; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader()
