"""The search space built from a model: one set of knobs per Conv2d / Linear layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from slimtune.spaces.plan import ALLOWED_BITS, CompressionPlan, LayerPlan

__all__ = ["SearchSpace", "compressible_layers"]


def compressible_layers(model: nn.Module) -> list[str]:
    """Names of the layers slimtune compresses: every Conv2d (groups=1) and Linear."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.groups == 1
        ):
            names.append(name)
    return names


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the per-layer and global knobs.

    Parameter names in the Optuna study are ``"<layer>.sparsity"``,
    ``"<layer>.rank_ratio"``, ``"<layer>.bits"``, ``"temperature"`` and ``"alpha"``.
    """

    layers: tuple[str, ...]
    sparsity: tuple[float, float] = (0.0, 0.95)
    rank_ratio: tuple[float, float] = (0.02, 1.0)  # the range (0, 1] with a floor
    bits: tuple[int, ...] = ALLOWED_BITS
    temperature: tuple[float, float] = (1.0, 20.0)  # sampled on a log scale
    alpha: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_model(cls, model: nn.Module) -> SearchSpace:
        return cls(layers=tuple(compressible_layers(model)))

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        """Ask ``trial`` for every knob; works with a live trial or ``FixedTrial``."""
        layers = {}
        for name in self.layers:
            layers[name] = LayerPlan(
                sparsity=trial.suggest_float(f"{name}.sparsity", *self.sparsity),
                rank_ratio=trial.suggest_float(f"{name}.rank_ratio", *self.rank_ratio),
                bits=int(trial.suggest_categorical(f"{name}.bits", list(self.bits))),
            )
        return CompressionPlan(
            layers=layers,
            temperature=trial.suggest_float("temperature", *self.temperature, log=True),
            alpha=trial.suggest_float("alpha", *self.alpha),
        )

    def params_of(self, plan: CompressionPlan) -> dict[str, Any]:
        """The study parameters that make :meth:`sample` return ``plan`` (for enqueueing)."""
        params: dict[str, Any] = {}
        for name in self.layers:
            lp = plan.layer(name)
            params[f"{name}.sparsity"] = min(max(lp.sparsity, self.sparsity[0]), self.sparsity[1])
            params[f"{name}.rank_ratio"] = min(
                max(lp.rank_ratio, self.rank_ratio[0]), self.rank_ratio[1]
            )
            params[f"{name}.bits"] = lp.bits
        params["temperature"] = min(max(plan.temperature, self.temperature[0]), self.temperature[1])
        params["alpha"] = plan.alpha
        return params

    def plan_from_params(self, params: Mapping[str, Any]) -> CompressionPlan:
        """Replay stored study parameters into a plan (Optuna's ``FixedTrial``)."""
        return self.sample(optuna.trial.FixedTrial(dict(params)))
