"""Top-1 accuracy of a classifier on tensors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["accuracy", "logits_of"]


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` whose arg-max logit equals ``y`` (eval mode, no gradients)."""
    if len(x) == 0:
        return float("nan")
    pred = logits_of(model, x, batch_size).argmax(dim=1)
    return float((pred == y).float().mean())
