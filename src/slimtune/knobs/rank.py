"""Rank kept: low-rank factorization of a layer by truncated SVD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slimtune.knobs.base import FloatRange, StructureKnob, check_ratio


class RankRatio(StructureKnob):
    """``rank_ratio`` in (0, 1]: the kept fraction of the layer's full rank (the layer
    becomes two; only where that stores fewer weights, see
    :func:`slimtune.ops.factorize.factorized_rank`)."""

    name = "rank_ratio"
    default = 1.0
    stage = 10
    space = FloatRange(0.02, 1.0)  # the range (0, 1] with a floor
    always_stored = True

    def check(self, value: Any) -> float:
        return check_ratio(self.name, value, low_open=True, high_open=False)

    def apply(self, model: Any, values: Mapping[str, Any], input_shape: Any) -> Any:
        from slimtune.ops.factorize import FactorizeConfig, factorize

        return factorize(model, FactorizeConfig(dict(values)), inplace=True)

    def skeleton(self, model: Any, values: Mapping[str, Any], input_shape: Any) -> Any:
        from slimtune.ops.factorize import FactorizeConfig, factorize

        return factorize(model, FactorizeConfig(dict(values)), with_weights=False,
                         inplace=True)

    label = "rank kept"

    def summary(self, value: Any) -> str:
        return f"r={value:.2f}"

    def strength(self, value: Any) -> float:
        return 1.0 - float(value)  # the fraction of the full rank dropped


KNOB = RankRatio()
