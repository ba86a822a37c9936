"""Per-output-channel symmetric weight quantization.

``scale_c = r_c max|w_c| / (2^(b-1) - 1)``, ``q = clamp(round(w / scale), -qmax, qmax)``;
the forward pass uses ``q * scale`` and the backward pass the straight-through estimator
(gradient of the identity). A b-bit channel therefore holds at most ``2^b - 1`` distinct
values. The same :func:`quantize_codes` produces the integers packed into the artifact,
which stores each channel's scale, so the format does not depend on how it was chosen.

The clipping ratio ``r_c``: 1 (max-abs scaling) above :data:`MSE_BITS` bits; at
:data:`MSE_BITS` bits or fewer, the ratio of :data:`CLIP_RATIOS` with the least squared
error ``||w_c - q_c scale_c||^2`` for that channel (an MSE-optimal clipping search, as in
Banner et al. 2019 and most post-training quantizers). At 2-4 bits max-abs scaling spends
the few levels on one outlier: clipping it trades a large error on that one weight for a
smaller error on all the others. Ties keep ratio 1, so weights already on a max-abs grid
(a decoded artifact) encode to the same codes and scales. It is off by default
(``CLIP = "max"``): searched afresh at every training step it cost accuracy after the
fine-tune in ``bench/quantizer.py``, though it helps the untrained 2-bit student; a
learned step size (LSQ) or a ratio fixed before training are the next things to try.
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
           "MSE_BITS", "CLIP_RATIOS"]


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
#: "max" (max-abs scaling at every bit-width: the default) or "mse" (the search above: off,
#: because after a fine-tune it loses accuracy, BENCHMARKS.md "Issue 13: the quantizer")
CLIP = "max"


def quantize_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes in ``[-qmax, qmax]`` and float32 per-output-channel scales."""
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().to(torch.float32)
    flat = w.reshape(w.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    if bits <= MSE_BITS and CLIP == "mse":
        scale = _mse_scale(flat, scale, qmax)
    view = (-1,) + (1,) * (w.ndim - 1)
    codes = torch.clamp(torch.round(w / scale.view(view)), -qmax, qmax)
    return codes.to(torch.int32), scale


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
    """Parametrization ``w -> dequantize(quantize(w))`` with a straight-through gradient."""

    knob = "bits"  # the knob that made it

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    @property
    def value(self) -> int:
        return self.bits

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        """The dequantized weight exactly as the artifact stores it (the forward pass's
        ``w + (wq - w)`` may differ from it in the last bit)."""
        return dequantize(*quantize_codes(w, self.bits)).to(w.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
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
        return f"bits={self.bits}"


def quantize(model: nn.Module, config: QuantizeConfig, *, inplace: bool = False) -> nn.Module:
    """Fake-quantize the weights of every named layer below 32 bits."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, bits in config.bits.items():
        if bits >= 32:
            continue
        for layer in target_layers(model, name):
            parametrize.register_parametrization(layer, "weight", FakeQuant(bits))
    return model
