"""The one training loop of slimtune, and the one measure of a model on a split.

The teacher's training (:mod:`slimtune.models.teacher`) and the student's fine-tune
(:func:`slimtune.compress.distill.distill`) differ only in their loss, optimizer and
schedule; both run :func:`train_loop`. Data come as a :class:`~slimtune.data.split.Split`
read in batches, so a data set that streams changes ``data/`` alone.
:func:`accuracy` lives here, beside the data and the models it reads (the objective
:func:`slimtune.objectives.accuracy` is this function), so that teacher training does not
depend on ``objectives/``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimtune.data.split import Batch, Split, as_split

__all__ = ["train_loop", "logits_of", "accuracy"]


def train_loop(
    model: nn.Module,
    train: Split,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    on_batch: Callable[[int, int, Batch, torch.Tensor], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
    max_steps: int | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` passes over ``train`` (or until
    ``max_steps`` steps, mid-pass if need be) and return it in eval mode. Each pass is one
    permutation drawn from ``generator``, each batch augmented
    with it (the split's own training augmentation), then one optimizer step and one
    schedule step.

    ``on_batch(epoch, step, batch, loss)`` sees each batch's loss before its backward pass
    (it may raise to stop the run); ``on_epoch(epoch)`` runs after each pass. Epochs and
    steps count from 1, steps over the whole run.
    """
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train.batches(batch_size, shuffle=True, generator=generator,
                                   augment=True):
            if max_steps is not None and step >= max_steps:
                return model.eval()
            loss = loss_fn(model, batch)
            step += 1
            if on_batch is not None:
                on_batch(epoch, step, batch, loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, data: Split | torch.Tensor, batch_size: int = 1024
              ) -> torch.Tensor:
    """The logits of ``model`` (in eval mode) on every example of ``data``, in order: a
    split, or inputs ``x`` alone."""
    inputs = (data.split(batch_size) if isinstance(data, torch.Tensor)
              else (b.x for b in data.batches(batch_size)))
    was_training = model.training
    model.eval()
    out = torch.cat([model(x) for x in inputs])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, data: Split | torch.Tensor, y: torch.Tensor | None = None,
             batch_size: int = 1024) -> float:
    """Fraction of the examples of ``data`` (a split, or inputs ``x`` with labels ``y``)
    whose arg-max logit is their label (eval mode, no gradients); NaN on no examples."""
    split = as_split(data, y)
    if len(split) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    hits = torch.cat([model(b.x).argmax(dim=1) == b.y for b in split.batches(batch_size)])
    model.train(was_training)
    return float(hits.float().mean())
