"""``apply(model, plan)``: every knob's transform, in the order of their stages."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

from slimtune.errors import ConfigError
from slimtune.knobs import KNOBS, by_stage, structure_knobs

if TYPE_CHECKING:  # pragma: no cover - a plan is data; compress needs only its shape
    from slimtune.spaces.plan import CompressionPlan, LayerPlan

__all__ = ["apply", "apply_", "configs_of", "plan_modules", "skeleton_of"]


def configs_of(plan: CompressionPlan) -> dict[str, dict[str, Any]]:
    """Knob name -> {layer: value} for the layers the knob changes (registry order)."""
    return {name: {n: lp[name] for n, lp in plan.layers.items() if k.active(lp[name])}
            for name, k in KNOBS.items()}


def apply_(
    model: nn.Module, plan: CompressionPlan, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Compress ``model`` in place; returns it (factorized layers are new modules).

    Order (each knob's ``stage``): channel pruning, factorization, 2:4 sparsity,
    unstructured sparsity, quantization. ``input_shape`` (without the batch) is needed when
    the plan prunes channels.
    """
    plan_modules(model, plan)  # every layer it names is a Conv2d/Linear of the model
    values = configs_of(plan)
    for k in by_stage():
        if values[k.name]:
            model = k.apply(model, values[k.name], input_shape)
    return model


def apply(
    model: nn.Module, plan: CompressionPlan, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """A compressed copy of ``model`` (the input is left untouched)."""
    return apply_(copy.deepcopy(model), plan, input_shape)


def skeleton_of(model: nn.Module, plan: CompressionPlan, input_shape: tuple[int, ...]
                ) -> nn.Module:
    """``model`` (changed in place) with the shapes ``plan`` gives it, weights unset: the
    structure knobs only (channels, factorization), which depend on shapes alone."""
    values = configs_of(plan)
    for k in structure_knobs():
        if values[k.name]:
            model = k.skeleton(model, values[k.name], tuple(input_shape))
    return model


def plan_modules(model: nn.Module, plan: CompressionPlan) -> dict[str, LayerPlan]:
    """Module name -> its layer's plan, for every Conv2d/Linear a plan layer became
    (both halves of a factorized layer), in module order."""
    from slimtune.ops.factorize import Factorized

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
