"""2:4 semi-structured sparsity: in each group of four consecutive input weights of an
output channel, two are zero (the pattern NVIDIA's sparse tensor cores run at twice the
dense rate).

Groups run along a weight's flattened fan-in (``in_channels x kh x kw`` for a conv, in
PyTorch's memory order); each keeps its two largest weights by magnitude. A weight whose
fan-in is not a multiple of four is left alone (as factorization leaves a layer it would
not make smaller), so the plan may ask for 2:4 anywhere and the loader still knows, from
the shape alone, which weights carry the pattern. It comes before unstructured sparsity
(``stage``), which then zeroes more only if it asks for more than half.

In the artifact each group's pattern is one of the C(4, 2) = 6 ways to keep two of four:
a stream of patterns, 3 bits per group fixed-width (0.75 bits per weight; a bitmap would
take 1), or entropy-coded (log2 6 = 2.58 bits per group at most).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from slimtune.codec.streams import Kind, Patterns
from slimtune.errors import ArtifactError, ConfigError, SlimtuneError
from slimtune.knobs.base import Choices, MaskKnob

#: the six ways to keep two of four, as 4-bit masks (bit i = position i kept)
PATTERNS = tuple(sum(1 << i for i in pair) for pair in itertools.combinations(range(4), 2))
_CODE_OF = np.full(16, 255, dtype=np.uint8)
_CODE_OF[list(PATTERNS)] = np.arange(len(PATTERNS), dtype=np.uint8)


def applies(shape: tuple[int, ...]) -> bool:
    """Whether a weight of ``shape`` (out x fan-in ...) takes the 2:4 pattern."""
    fan_in = int(np.prod(shape[1:]))
    return fan_in > 0 and fan_in % 4 == 0


def two_four_mask(weight: Any) -> Any:
    """0/1 mask (weight's shape and dtype) keeping the two largest-magnitude weights of
    every group of four consecutive fan-in positions (ties: the earlier position)."""
    import torch

    groups = weight.detach().abs().reshape(weight.shape[0], -1, 4)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(groups)
    mask.scatter_(-1, order[..., :2], 1.0)
    return mask.reshape(weight.shape)


class TwoFour(MaskKnob):
    """``two_four`` (True/False): the layer's weights in the 2:4 pattern."""

    name = "two_four"
    default = False
    stage = 20  # after the shapes are final, before unstructured sparsity
    space = Choices((False, True))
    opt_in = True  # searched only with `--knob two_four`

    def check(self, value: Any) -> bool:
        if value not in (True, False) or not isinstance(value, (bool, int)):
            raise ConfigError(f"`two_four` must be true or false, but got two_four={value!r}")
        return bool(value)

    def apply(self, model: Any, values: Mapping[str, Any], input_shape: Any) -> Any:
        from torch.nn.utils import parametrize

        from slimtune.ops.prune import MagnitudeMask, target_layers

        for name, on in values.items():
            for layer in target_layers(model, name) if on else ():
                if applies(tuple(layer.weight.shape)):
                    mask = two_four_mask(layer.weight)
                    parametrize.register_parametrization(
                        layer, "weight", MagnitudeMask(mask, knob=self.name))
        return model

    def kept(self, shape: tuple[int, ...], value: Any, before: int) -> int:
        return before // 2 if applies(shape) else before

    def index_kind(self, shape: tuple[int, ...], value: Any, before: int, kept: int) -> Kind:
        return Patterns(int(np.prod(shape)) // 4)

    def index_symbols(self, before: np.ndarray, mask: np.ndarray, value: Any,
                      shape: tuple[int, ...]) -> np.ndarray:
        if not before.all():
            raise SlimtuneError("2:4 sparsity must be the first mask of a weight")
        nibbles = np.packbits(mask.reshape(-1, 4), axis=1, bitorder="little")[:, 0]
        codes = _CODE_OF[nibbles]
        if (codes == 255).any():
            raise SlimtuneError("a weight does not hold the 2:4 pattern its plan says")
        return codes.astype(np.int64)

    def mask_of(self, symbols: np.ndarray, before: np.ndarray, value: Any,
                shape: tuple[int, ...], key: str) -> np.ndarray:
        if len(symbols) and symbols.max() >= len(PATTERNS):
            raise ArtifactError(f"the artifact's 2:4 index for `{key}` is corrupted")
        nibbles = np.asarray(PATTERNS, dtype=np.uint8)[symbols]
        keep = np.unpackbits(nibbles[:, None], axis=1, count=4, bitorder="little")
        return keep.reshape(-1).astype(bool) & before

    label = "2:4"

    def summary(self, value: Any) -> str:
        return "2:4"

    def strength(self, value: Any) -> float:
        return 0.5 if value else 0.0  # half of the weights zeroed


KNOB = TwoFour()
