"""``apply(model, plan)``: factorize, then prune, then quantize, as one plan says."""

from __future__ import annotations

import copy

from torch import nn

from slimtune.compress.factorize import FactorizeConfig, factorize
from slimtune.compress.prune import PruneConfig, prune
from slimtune.compress.quantize import QuantizeConfig, quantize
from slimtune.spaces.plan import CompressionPlan

__all__ = ["apply", "apply_", "configs_of"]


def configs_of(plan: CompressionPlan) -> tuple[FactorizeConfig, PruneConfig, QuantizeConfig]:
    """Split a plan into one config per transform (only layers the transform changes)."""
    return (
        FactorizeConfig({n: lp.rank_ratio for n, lp in plan.layers.items() if lp.rank_ratio < 1}),
        PruneConfig({n: lp.sparsity for n, lp in plan.layers.items() if lp.sparsity > 0}),
        QuantizeConfig({n: lp.bits for n, lp in plan.layers.items() if lp.bits < 32}),
    )


def apply_(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """Compress ``model`` in place; returns it (the factorized layers are new modules)."""
    fact, pr, qu = configs_of(plan)
    model = factorize(model, fact, inplace=True)
    model = prune(model, pr, inplace=True)
    return quantize(model, qu, inplace=True)


def apply(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """A compressed copy of ``model`` (the input is left untouched)."""
    return apply_(copy.deepcopy(model), plan)
