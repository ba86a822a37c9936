"""Per-output-channel symmetric weight quantization.

``scale_c = r_c max|w_c| / (2^(b-1) - 1)``, ``q = clamp(round(w / scale), -qmax, qmax)``;
the forward pass uses ``q * scale`` and the backward pass the straight-through estimator
(gradient of the identity). A b-bit channel therefore holds at most ``2^b - 1`` distinct
values. The same :func:`quantize_codes` produces the integers packed into the artifact,
which stores each channel's scale, so the format does not depend on how it was chosen.

The clipping ratio ``r_c`` depends on :data:`CLIP` at :data:`MSE_BITS` bits or fewer
(above: always 1, max-abs scaling):

- ``"max"``: 1. At 2-4 bits max-abs scaling spends the few levels on one outlier.
- ``"mse"``: searched at every forward pass, the ratio of :data:`CLIP_RATIOS` with the
  least squared error ``||w_c - q_c scale_c||^2`` for the channel (Banner et al. 2019).
- ``"learned"`` (the default): a trainable ratio per channel, started at the MSE-optimal
  one and then learned by the fine-tune's optimizer with the LSQ gradient (Esser et al.
  2020: the step size's gradient through ``round`` and ``clamp``, the straight-through one
  elsewhere), kept in (0, 1], for a layer that is not unstructured-pruned (on a sparse
  one max-abs scaling trained better: :data:`MAX_ZEROS`). The step is
  ``r_c max|w_c| / qmax``, so the largest weight of a channel always meets the top code
  and the exported codes and scales are those of max-abs scaling applied to the
  dequantized weight: the artifact format does not change.

:func:`quantize_codes` is max-abs scaling (``"mse"``: with the search), exact for weights
already on a grid; ties in the search keep ratio 1, so a decoded artifact encodes to the
same codes and scales. BENCHMARKS.md "Issue 13: the quantizer" has what each one buys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.errors import ConfigError
from slimtune.ops.prune import target_layers

__all__ = ["QuantizeConfig", "FakeQuant", "quantize", "quantize_codes", "dequantize",
           "MSE_BITS", "CLIP_RATIOS", "CLIPS", "reset_clipping"]


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight bit-width per layer name (32 = leave as float32)."""

    bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, b in self.bits.items():
            if not (2 <= int(b) <= 32) or int(b) != b:
                raise ConfigError(
                    f"`bits` must be an integer in 2..32, but got bits={b} for `{name}`"
                )


#: at this many bits or fewer each channel's clipping ratio is searched (above: max-abs)
MSE_BITS = 4
#: the clipping ratios tried, as fractions of a channel's max-abs weight
CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
#: the clipping at MSE_BITS bits or fewer (the module docstring): one of CLIPS
CLIPS = ("max", "mse", "learned")
CLIP = "learned"
#: the smallest learned ratio (a channel's step never collapses to zero)
MIN_RATIO = 0.05
#: learned clipping only for a layer with fewer zeros than this (not unstructured-pruned):
#: on 50 %-sparse 2-bit layers it cost 1.2-1.4 points after the fine-tune, MSE ratio fixed
#: or learned alike, while it gained up to 1.1 on dense ones (BENCHMARKS.md)
MAX_ZEROS = 0.1


def quantize_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes in ``[-qmax, qmax]`` and float32 per-output-channel scales."""
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().to(torch.float32)
    flat = w.reshape(w.shape[0], -1)
    scale = _maxabs_scale(flat, qmax)
    if bits <= MSE_BITS and CLIP == "mse":
        scale = _mse_scale(flat, scale, qmax)
    view = (-1,) + (1,) * (w.ndim - 1)
    codes = torch.clamp(torch.round(w / scale.view(view)), -qmax, qmax)
    return codes.to(torch.int32), scale


def _maxabs_scale(flat: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per row of ``flat``, max-abs scaling's step ``max|w| / qmax`` (1 for an all-zero row)."""
    amax = flat.abs().amax(dim=1)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def _mse_ratio(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel of ``w``, the ratio of :data:`CLIP_RATIOS` whose max-abs-relative
    scale quantizes it with the least squared error (ties: the larger ratio)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().to(torch.float32).reshape(w.shape[0], -1)
    scale = _maxabs_scale(flat, qmax)
    return _mse_scale(flat, scale, qmax) / scale


def _mse_scale(flat: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per row of ``flat``, the scale ``r * scale`` (``r`` in :data:`CLIP_RATIOS`) whose
    quantization has the least squared error; ratio 1 unless another is strictly better."""
    def error(s: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(flat / s[:, None]), -qmax, qmax) * s[:, None]
        return (q - flat).pow(2).sum(dim=1)

    best, best_err = scale, error(scale)
    for r in CLIP_RATIOS[1:]:
        s = scale * r
        err = error(s)
        better = err < best_err
        best = torch.where(better, s, best)
        best_err = torch.where(better, err, best_err)
    return best


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    view = (-1,) + (1,) * (codes.ndim - 1)
    return codes.to(torch.float32) * scale.view(view)


class FakeQuant(nn.Module):
    """Parametrization ``w -> dequantize(quantize(w))`` with a straight-through gradient;
    with ``learned`` clipping (:data:`CLIP` at the time it is made, at most
    :data:`MSE_BITS` bits) it holds a trainable per-channel clipping ratio ``ratio``."""

    knob = "bits"  # the knob that made it

    def __init__(self, bits: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bits = int(bits)
        low = CLIP == "learned" and self.bits <= MSE_BITS
        if low and weight is None:
            raise ValueError("learned clipping starts from the weight it quantizes")
        self.learned = low and float((weight == 0).float().mean()) < MAX_ZEROS
        if self.learned:
            self.ratio = nn.Parameter(_mse_ratio(weight, self.bits))

    @property
    def value(self) -> int:
        return self.bits

    def _learned(self, w: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        view = (-1,) + (1,) * (w.ndim - 1)
        base = _maxabs_scale(w.detach().reshape(w.shape[0], -1), qmax)
        r = self.ratio
        r = r + (r.clamp(MIN_RATIO, 1.0) - r).detach()  # kept in range, its gradient whole
        step = (base * r).to(w.dtype).view(view)
        v = torch.clamp(w / step, -qmax, qmax)
        return (v + (torch.round(v) - v).detach()) * step  # LSQ: round passes the gradient

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        """The dequantized weight exactly as the artifact stores it (the forward pass's
        ``w + (wq - w)`` may differ from it in the last bit)."""
        if self.learned:
            return self._learned(w).detach()
        return dequantize(*quantize_codes(w, self.bits)).to(w.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.learned:
            return self._learned(w)
        codes, scale = quantize_codes(w, self.bits)
        wq = dequantize(codes, scale).to(w.dtype)
        if CLIP == "mse" and self.bits <= MSE_BITS:
            # the straight-through gradient, zero where the scale clips a weight: one beyond
            # the range does not change the output, so it is not moved (else it drifts)
            view = (-1,) + (1,) * (w.ndim - 1)
            edge = (scale * (2 ** (self.bits - 1) - 1)).to(w.dtype).view(view)
            w = torch.maximum(torch.minimum(w, edge), -edge)
        return w + (wq - w).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + (", learned clipping" if self.learned else "")


def reset_clipping(model: nn.Module) -> nn.Module:
    """Start every learned clipping ratio of ``model`` afresh from the weight it quantizes
    now (after weights were copied in: on a decoded artifact's grid that is ratio 1, so the
    model computes what the file does)."""
    for module in model.modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        w = module.parametrizations["weight"].original
        for p in module.parametrizations["weight"]:
            if isinstance(p, FakeQuant) and p.learned:
                with torch.no_grad():
                    p.ratio.copy_(_mse_ratio(w, p.bits))
            w = p(w)
    return model


def quantize(model: nn.Module, config: QuantizeConfig, *, inplace: bool = False) -> nn.Module:
    """Fake-quantize the weights of every named layer below 32 bits."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, bits in config.bits.items():
        if bits >= 32:
            continue
        for layer in target_layers(model, name):
            parametrize.register_parametrization(layer, "weight",
                                                 FakeQuant(bits, layer.weight.detach()))
    return model
