"""One split of a data set as batches: the contract every consumer of data reads.

Training, teacher training, accuracy and the sensitivity probe see data only through
:class:`Split`: its length, its input shape and its :meth:`~Split.batches`. Today's data
sets are tensors in memory (:class:`TensorSplit`); a data set that streams from disk
implements the same few members in ``data/`` and nothing above ``data/`` changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch

__all__ = ["Batch", "Split", "TensorSplit", "Augment", "as_split"]

#: a training augmentation: a batch of inputs (and the generator to draw from) to a batch
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class Batch(NamedTuple):
    """A batch: inputs, labels and ``index``, the examples' positions in their split (an
    int64 tensor on the batch's device: indexes a tensor of per-example values, such as
    a teacher's precomputed logits)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


@runtime_checkable
class Split(Protocol):
    """A split of a data set, read in batches.

    What an implementation (a split held in memory or one that streams) must provide:

    - ``len(split)``: the number of examples, known before reading any of them;
    - ``input_shape``: one example's shape, without the batch dimension;
    - ``augments``: whether ``batches(augment=True)`` changes the inputs (then a teacher
      must see every batch; otherwise its logits on the split are computed once);
    - ``batches(batch_size, *, shuffle, generator, augment)``: every example exactly once,
      in batches of ``batch_size`` (the last one may be smaller), each a :class:`Batch`
      whose ``index`` holds the examples' positions ``0..len-1``. Without ``shuffle`` in
      order; with it in the order of one ``torch.randperm(len, generator=generator)``
      drawn when the first batch is asked for. With ``augment``, the split's training
      augmentation is applied to each batch, drawing from ``generator`` after the
      permutation. A new call starts a new pass (an epoch);
    - ``to(device)``: the split whose batches are on ``device``;
    - ``head(n)``: the split of its first ``n`` examples (all of them if it has fewer);
    - ``fingerprint()``: a short hex digest of its examples and labels, the same for the
      same data (it keys the teacher cache).
    """

    def __len__(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def augments(self) -> bool: ...

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: bool = False
                ) -> Iterator[Batch]: ...

    def to(self, device: torch.device | str) -> Split: ...

    def head(self, n: int) -> Split: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True, eq=False)
class TensorSplit:
    """A split held as tensors ``x`` (N x ...) and ``y`` (N labels) on one device; batches
    are index slices of them (no DataLoader), ``augment`` is its training augmentation."""

    x: torch.Tensor
    y: torch.Tensor
    augment: Augment | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def augments(self) -> bool:
        return self.augment is not None

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: bool = False
                ) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"`batch_size >= 1` must hold, but got {batch_size}")
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator).to(self.x.device)
        for start in range(0, n, batch_size):
            if shuffle:
                index = perm[start : start + batch_size]
                x, y = self.x[index], self.y[index]
            else:
                index = torch.arange(start, min(start + batch_size, n), device=self.x.device)
                x, y = self.x[start : start + batch_size], self.y[start : start + batch_size]
            if augment and self.augment is not None:
                x = self.augment(x, generator)
            yield Batch(x, y, index)

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device), self.augment)

    def head(self, n: int) -> TensorSplit:
        return TensorSplit(self.x[:n], self.y[:n], self.augment)

    def take(self, index: torch.Tensor) -> TensorSplit:
        """The examples at ``index`` (a subset), in that order."""
        return TensorSplit(self.x[index], self.y[index], self.augment)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.x, self.y):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def as_split(data: Split | torch.Tensor, y: torch.Tensor | None = None) -> Split:
    """``data`` itself when it is a split; tensors ``(data, y)`` as a :class:`TensorSplit`
    (the older call form of the functions that read data)."""
    if isinstance(data, torch.Tensor):
        if y is None:
            raise TypeError("`y` must be given with tensor inputs `x`, but got None")
        return TensorSplit(data, y)
    if y is not None:
        raise TypeError(f"`y` must be None when `data` is a split, but got a "
                        f"{type(y).__name__}")
    return data
