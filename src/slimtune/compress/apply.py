"""``apply(model, plan)``: factorize, then prune, then quantize, as one plan says."""

from __future__ import annotations

import copy

from torch import nn

from slimtune.compress.factorize import FactorizeConfig, factorize
from slimtune.compress.prune import PruneConfig, prune
from slimtune.compress.quantize import QuantizeConfig, quantize
from slimtune.compress.structured import ChannelPruneConfig, channel_prune
from slimtune.errors import ConfigError
from slimtune.spaces.plan import CompressionPlan, LayerPlan

__all__ = ["apply", "apply_", "configs_of", "plan_modules"]


def configs_of(
    plan: CompressionPlan,
) -> tuple[ChannelPruneConfig, FactorizeConfig, PruneConfig, QuantizeConfig]:
    """Split a plan into one config per transform (only layers the transform changes)."""
    return (
        ChannelPruneConfig({n: lp.keep_ratio for n, lp in plan.layers.items()
                            if lp.keep_ratio < 1}),
        FactorizeConfig({n: lp.rank_ratio for n, lp in plan.layers.items() if lp.rank_ratio < 1}),
        PruneConfig({n: lp.sparsity for n, lp in plan.layers.items() if lp.sparsity > 0}),
        QuantizeConfig({n: lp.bits for n, lp in plan.layers.items() if lp.bits < 32}),
    )


def apply_(
    model: nn.Module, plan: CompressionPlan, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Compress ``model`` in place; returns it (the factorized layers are new modules).

    Order: structured channel pruning, factorization, unstructured pruning, quantization.
    ``input_shape`` (without the batch) is needed when the plan prunes channels.
    """
    plan_modules(model, plan)  # every layer it names is a Conv2d/Linear of the model
    chan, fact, pr, qu = configs_of(plan)
    if chan.keep_ratio:
        if input_shape is None:
            raise ConfigError("the plan prunes channels: pass the model's `input_shape`")
        model = channel_prune(model, chan, tuple(input_shape), inplace=True)
    model = factorize(model, fact, inplace=True)
    model = prune(model, pr, inplace=True)
    return quantize(model, qu, inplace=True)


def apply(
    model: nn.Module, plan: CompressionPlan, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """A compressed copy of ``model`` (the input is left untouched)."""
    return apply_(copy.deepcopy(model), plan, input_shape)


def plan_modules(model: nn.Module, plan: CompressionPlan) -> dict[str, LayerPlan]:
    """Module name -> its layer's plan, for every Conv2d/Linear a plan layer became
    (both halves of a factorized layer), in module order."""
    from slimtune.compress.factorize import Factorized

    out: dict[str, LayerPlan] = {}
    modules = dict(model.named_modules())
    for name, lp in plan.layers.items():
        module = modules.get(name)
        if module is None or not name:
            raise ConfigError(f"the plan names layer `{name}`, which is not a module of the "
                              f"model ({type(model).__name__})")
        if not isinstance(module, Factorized | nn.Conv2d | nn.Linear):
            raise ConfigError(f"the plan names layer `{name}`, a {type(module).__name__}; "
                              "only Conv2d and Linear layers can be compressed")
        if isinstance(module, Factorized):
            for i in range(len(module)):
                out[f"{name}.{i}"] = lp
        else:
            out[name] = lp
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))
