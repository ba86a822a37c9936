"""Low-rank factorization by truncated SVD.

A Linear ``in -> out`` becomes ``Linear(in -> r, no bias)`` then ``Linear(r -> out)``; a
Conv2d ``k x k, in -> out`` becomes a ``k x k`` conv ``in -> r`` (same stride, padding,
dilation, no bias) followed by a ``1 x 1`` conv ``r -> out``. A layer is factorized only
where that stores fewer weights than the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from slimtune.errors import ConfigError

__all__ = ["FactorizeConfig", "Factorized", "factorize", "full_rank", "factorized_rank"]


class Factorized(nn.Sequential):
    """Marker type for the two-layer replacement of one factorized layer."""


@dataclass(frozen=True)
class FactorizeConfig:
    """Kept rank ratio per layer name (layers not named are left alone)."""

    rank_ratio: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, ratio in self.rank_ratio.items():
            if not (0.0 < ratio <= 1.0):
                raise ConfigError(
                    f"`0 < rank_ratio <= 1` must hold, but got rank_ratio={ratio} for `{name}`"
                )


def full_rank(layer: nn.Module) -> int:
    """Rank of the layer's weight seen as an ``out x (in * k * k)`` matrix."""
    w = layer.weight
    return min(w.shape[0], w[0].numel())


def factorized_rank(layer: nn.Module, rank_ratio: float) -> int | None:
    """The rank to factorize ``layer`` to, or None when factorizing would not save weights."""
    import math

    out_features = layer.weight.shape[0]
    fan_in = layer.weight[0].numel()
    r = max(1, min(full_rank(layer), math.ceil(rank_ratio * full_rank(layer) - 1e-9)))
    if r * (fan_in + out_features) >= out_features * fan_in:
        return None
    return r


def _split(layer: nn.Module, r: int, with_weights: bool) -> Factorized:
    dev, dtype = layer.weight.device, layer.weight.dtype
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, r, bias=False, device=dev, dtype=dtype)
        second = nn.Linear(r, layer.out_features, bias=has_bias, device=dev, dtype=dtype)
    elif isinstance(layer, nn.Conv2d):
        first = nn.Conv2d(
            layer.in_channels, r, layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode,
            device=dev, dtype=dtype,
        )
        second = nn.Conv2d(r, layer.out_channels, 1, bias=has_bias, device=dev, dtype=dtype)
    else:  # pragma: no cover - guarded by the caller
        raise ConfigError(f"cannot factorize a {type(layer).__name__}")
    if with_weights:
        with torch.no_grad():
            w = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.float64)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            root = s[:r].sqrt()
            a = (root[:, None] * vh[:r]).to(dtype)  # r x fan_in
            b = (u[:, :r] * root[None, :]).to(dtype)  # out x r
            first.weight.copy_(a.reshape(first.weight.shape))
            second.weight.copy_(b.reshape(second.weight.shape))
            if has_bias:
                second.bias.copy_(layer.bias.detach())
    return Factorized(first, second)


def factorize(
    model: nn.Module, config: FactorizeConfig, *, with_weights: bool = True, inplace: bool = False
) -> nn.Module:
    """Replace each named layer by its rank-``r`` factorization where that saves weights.

    With ``with_weights=False`` only the structure is built (used when loading an artifact,
    whose weights come from the file).
    """
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, ratio in config.rank_ratio.items():
        if name not in modules:
            raise ConfigError(f"layer `{name}` is not in the model")
        layer = modules[name]
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            raise ConfigError(f"layer `{name}` is a {type(layer).__name__}, not Conv2d/Linear")
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue
        r = factorized_rank(layer, ratio)
        if r is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _split(layer, r, with_weights))
    return model
