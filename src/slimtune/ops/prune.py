"""Unstructured magnitude pruning whose zeros stay zero through fine-tuning.

The mask is a parametrization of the weight (``weight = original * mask``), so every
forward pass, and hence every gradient step, sees the zeros: no optimizer can revive them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.errors import ConfigError

__all__ = ["PruneConfig", "MagnitudeMask", "prune", "magnitude_mask", "pruned_count"]


@dataclass(frozen=True)
class PruneConfig:
    """Fraction of weights to zero, per layer name."""

    sparsity: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, s in self.sparsity.items():
            if not (0.0 <= s < 1.0):
                raise ConfigError(
                    f"`0 <= sparsity < 1` must hold, but got sparsity={s} for `{name}`"
                )


class MagnitudeMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed 0/1 mask; ``knob`` names the knob
    that made it (the exporter writes each mask knob's own index)."""

    def __init__(self, mask: torch.Tensor, knob: str = "sparsity") -> None:
        super().__init__()
        self.knob = knob
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def pruned_count(numel: int, sparsity: float) -> int:
    """How many weights a layer of ``numel`` weights loses at ``sparsity`` (exact)."""
    return int(round(sparsity * numel))


def magnitude_mask(weight: torch.Tensor, sparsity: float,
                   kept: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask zeroing exactly ``round(sparsity * numel)`` smallest-magnitude weights.

    ``kept`` (a 0/1 mask of an earlier mask knob): its zeros count first, so the result
    zeroes ``max(round(sparsity * numel), zeros of kept)`` positions, all of kept's zeros
    among them."""
    k = pruned_count(weight.numel(), sparsity)
    flat = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    score = weight.detach().abs().flatten()
    if kept is not None:
        gone = kept.flatten() == 0
        score = torch.where(gone, torch.full_like(score, -1.0), score)
        k = max(k, int(gone.sum()))
    if k > 0:
        order = torch.argsort(score, stable=True)
        flat[order[:k]] = 0
    return flat.reshape(weight.shape)


def current_mask(layer: nn.Module) -> torch.Tensor | None:
    """The product of the masks already on ``layer``'s weight (None if it has none)."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    mask = None
    for p in layer.parametrizations["weight"]:
        if isinstance(p, MagnitudeMask):
            mask = p.mask if mask is None else mask * p.mask
    return mask


def target_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The Conv2d/Linear modules standing for layer ``name`` (two if it was factorized)."""
    from slimtune.ops.factorize import Factorized

    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"layer `{name}` is not in the model") from None
    if isinstance(module, Factorized):
        return list(module)
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise ConfigError(f"layer `{name}` is a {type(module).__name__}, not Conv2d/Linear")
    return [module]


def prune(model: nn.Module, config: PruneConfig, *, inplace: bool = False) -> nn.Module:
    """Mask the smallest-magnitude weights of every named layer (both halves if factorized)."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, sparsity in config.sparsity.items():
        for layer in target_layers(model, name):
            kept = current_mask(layer)  # from an earlier mask knob (2:4), or None
            before = layer.weight.numel() if kept is None else int(kept.sum())
            if layer.weight.numel() - pruned_count(layer.weight.numel(), sparsity) >= before:
                continue  # asks for no zeros beyond those already there
            mask = magnitude_mask(layer.weight, sparsity, kept)
            parametrize.register_parametrization(layer, "weight", MagnitudeMask(mask))
    return model
