"""Channels kept: structured pruning of a layer's output channels (torch-pruning)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slimtune.errors import ConfigError
from slimtune.knobs.base import FloatRange, StructureKnob, check_ratio


class KeepRatio(StructureKnob):
    """``keep_ratio`` in (0, 1]: the kept fraction of the layer's output channels; the
    layer, its BatchNorm and its consumers really shrink. Never for the layer that makes
    the model's outputs."""

    name = "keep_ratio"
    default = 1.0
    stage = 0
    space = FloatRange(0.1, 1.0)
    always_stored = True
    ladder = (1.0, 0.75, 0.5, 0.35)
    probes = (0.75, 0.35)

    def check(self, value: Any) -> float:
        return check_ratio(self.name, value, low_open=True, high_open=False)

    def in_space(self, space: Any, layer: str) -> bool:
        return bool(space.structured) and layer not in space.fixed_channels

    def apply(self, model: Any, values: Mapping[str, Any],
              input_shape: tuple[int, ...] | None) -> Any:
        from slimtune.ops.structured import ChannelPruneConfig, channel_prune

        if input_shape is None:
            raise ConfigError("the plan prunes channels: pass the model's `input_shape`")
        return channel_prune(model, ChannelPruneConfig(dict(values)), tuple(input_shape),
                             inplace=True)

    label = "channels kept"

    def summary(self, value: Any) -> str:
        return f"k={value:.2f}"

    def strength(self, value: Any) -> float:
        return 1.0 - float(value)  # the fraction of output channels removed


KNOB = KeepRatio()
