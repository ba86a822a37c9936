"""A split read from a map-style torch ``Dataset`` batch by batch: the streamed
:class:`~slimtune.data.split.Split` (a user's Dataset, or an image folder's files,
:mod:`slimtune.data.folder`).

Only the labels are held (``y``: subsets are stratified by them and the classes counted);
each batch is read when it is asked for through a ``DataLoader`` over the split's order,
with worker processes and pinned memory when the batches go to a GPU.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from slimtune.data.split import Augment, Batch
from slimtune.errors import DataError

__all__ = ["DatasetSplit", "labels_of", "GPU_LOADER_WORKERS"]

#: DataLoader worker processes when batches go to a GPU (on a CPU the trial's own thread
#: reads: its CPUs are the trial's, and more processes would only compete for them)
GPU_LOADER_WORKERS = 2


class _Ordered(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The items of ``split`` in the order ``order``, each with its position."""

    def __init__(self, split: DatasetSplit, order: torch.Tensor) -> None:
        self.split, self.order = split, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(self.order[i])
        return self.split.item(k), torch.tensor(k)


def labels_of(dataset: Any, what: str) -> torch.Tensor:
    """The labels of a map-style dataset: its ``targets`` when it has them (torchvision's
    datasets do), else one pass over its items."""
    targets = getattr(dataset, "targets", None)
    try:
        if targets is not None and len(targets) == len(dataset):
            return torch.as_tensor(targets, dtype=torch.int64)
        return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))],
                               dtype=torch.int64)
    except Exception as exc:  # noqa: BLE001 - whatever the dataset raised
        raise DataError(f"{what}: cannot read its labels (each item must be (x, y) with a "
                        f"class number y): {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, eq=False)
class DatasetSplit:
    """The examples ``index`` (all when None) of ``dataset``, read batch by batch."""

    dataset: Any  # map-style: len() and [i] -> (x, y)
    y: torch.Tensor  # the labels of the examples of this split, in order
    index: tuple[int, ...] | None = None
    augment: Augment | None = None
    device: str = "cpu"
    #: its items may differ from one read to the next (a user's Dataset may transform
    #: them at random): a teacher then sees every batch instead of logits kept per example
    varies: bool = False

    def __len__(self) -> int:
        return len(self.y)

    def item(self, k: int) -> torch.Tensor:
        """The input of this split's example ``k``, as float32."""
        i = self.index[k] if self.index is not None else k
        try:
            return torch.as_tensor(self.dataset[i][0], dtype=torch.float32)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read example {i} of the data set: "
                            f"{type(exc).__name__}: {exc}") from None

    @functools.cached_property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape (the first one read once, then kept)."""
        return tuple(self.item(0).shape)

    @property
    def augments(self) -> bool:
        return self.augment is not None or self.varies

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: bool = False
                ) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        gpu = self.device.startswith("cuda")
        loader = torch.utils.data.DataLoader(
            _Ordered(self, order), batch_size=batch_size, shuffle=False,
            num_workers=GPU_LOADER_WORKERS if gpu else 0, pin_memory=gpu)
        y = self.y.to(self.device)
        for x, index in loader:
            x = x.to(self.device, non_blocking=gpu)
            if augment and self.augment is not None:
                x = self.augment(x, generator)
            index = index.to(self.device)
            yield Batch(x, y[index], index)

    def to(self, device: torch.device | str) -> DatasetSplit:
        return replace(self, device=str(device))

    def _positions(self) -> list[int]:
        return list(self.index) if self.index is not None else list(range(len(self)))

    def head(self, n: int) -> DatasetSplit:
        return replace(self, index=tuple(self._positions()[:n]), y=self.y[:n])

    def take(self, index: torch.Tensor) -> DatasetSplit:
        """The examples at ``index`` (a subset), in that order."""
        at = self._positions()
        return replace(self, index=tuple(at[int(i)] for i in index), y=self.y[index])

    def fingerprint(self) -> str:
        """A digest of the labels and of up to 16 examples spread over the split (reading
        every example to key the teacher cache would cost a full pass)."""
        h = hashlib.sha256(str((len(self), self.input_shape)).encode())
        h.update(self.y.numpy().tobytes())
        n = len(self)
        for k in sorted({int(i * (n - 1) / 15) for i in range(16)} if n else set()):
            h.update(self.item(k).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
