"""Unstructured sparsity: the fraction of a layer's weights zeroed by magnitude."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from slimtune.codec.streams import Gaps, Kind
from slimtune.knobs.base import FloatRange, MaskKnob, check_ratio
from slimtune.ops.prune import pruned_count


class Sparsity(MaskKnob):
    """``sparsity`` in [0, 1): that fraction of the layer's weights, the smallest in
    magnitude, is zero and stays zero through fine-tuning. After another mask knob (2:4)
    it counts the same positions overall: it zeroes more only where it asks for more zeros
    than the earlier mask left."""

    name = "sparsity"
    default = 0.0
    stage = 30
    space = FloatRange(0.0, 0.95)
    always_stored = True
    ladder = (0.0, 0.5, 0.75, 0.9)
    probes = (0.5, 0.9)

    def check(self, value: Any) -> float:
        return check_ratio(self.name, value, low_open=False, high_open=True)

    def in_space(self, space: Any, layer: str) -> bool:
        return bool(space.unstructured)

    def apply(self, model: Any, values: Mapping[str, Any], input_shape: Any) -> Any:
        from slimtune.ops.prune import PruneConfig, prune

        return prune(model, PruneConfig(dict(values)), inplace=True)

    def kept(self, shape: tuple[int, ...], value: Any, before: int) -> int:
        numel = int(np.prod(shape))
        return min(before, numel - pruned_count(numel, value))

    def index_kind(self, shape: tuple[int, ...], value: Any, before: int, kept: int) -> Kind:
        return Gaps(before, kept)  # over the positions still kept: all, alone

    def index_symbols(self, before: np.ndarray, mask: np.ndarray, value: Any,
                      shape: tuple[int, ...]) -> np.ndarray:
        return Gaps.of(mask[before])

    def mask_of(self, symbols: np.ndarray, before: np.ndarray, value: Any,
                shape: tuple[int, ...], key: str) -> np.ndarray:
        among = Gaps(int(before.sum()), len(symbols)).mask(symbols, key)
        keep = np.zeros_like(before)
        keep[np.flatnonzero(before)[among]] = True
        return keep

    label = "sparsity"

    def summary(self, value: Any) -> str:
        return f"s={value:.2f}"

    def strength(self, value: Any) -> float:
        return float(value)  # the fraction of weights zeroed


KNOB = Sparsity()
