"""Rung 0 of the fidelity ladder: a compressed student's BatchNorm statistics
re-estimated on a few training batches, with no gradient step.

Pruning channels, zeroing weights or quantizing them shifts every activation's mean and
variance, so the teacher's running statistics no longer fit the student and its one-shot
accuracy understates what a fine-tune recovers. Re-estimating them (as cumulative averages
over ``batches`` batches, in training mode, under ``no_grad``) is nearly free and ranks
plans far better than the raw one-shot accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.data.split import Split

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, train: Split, *, batches: int = 8,
                          batch_size: int = 128,
                          generator: torch.Generator | None = None) -> nn.Module:
    """Reset and re-estimate every BatchNorm's running statistics of ``model`` (in place)
    from ``batches`` shuffled batches of ``train``; returns it in eval mode. Weights are
    untouched; a model without BatchNorm is returned as it is."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    model.train()
    try:
        for i, batch in enumerate(train.batches(batch_size, shuffle=True, generator=generator)):
            if i >= batches:
                break
            model(batch.x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return model
