"""The search space built from a model: one set of knobs per Conv2d / Linear layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from slimtune.errors import ConfigError
from slimtune.spaces.plan import ALLOWED_BITS, CompressionPlan, LayerPlan

__all__ = ["SearchSpace", "compressible_layers", "PRUNING_MODES"]

PRUNING_MODES = ("unstructured", "structured", "both")


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

    Parameter names in the Optuna study are ``"<layer>.sparsity"`` (unstructured
    pruning), ``"<layer>.keep_ratio"`` (structured pruning; never for the output layer),
    ``"<layer>.rank_ratio"``, ``"<layer>.bits"``, ``"temperature"`` and ``"alpha"``.
    """

    layers: tuple[str, ...]
    pruning: str = "both"
    fixed_channels: tuple[str, ...] = ()  # layers whose outputs are the model's outputs
    sparsity: tuple[float, float] = (0.0, 0.95)
    keep_ratio: tuple[float, float] = (0.1, 1.0)
    rank_ratio: tuple[float, float] = (0.02, 1.0)  # the range (0, 1] with a floor
    bits: tuple[int, ...] = ALLOWED_BITS
    temperature: tuple[float, float] = (1.0, 20.0)  # sampled on a log scale
    alpha: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.pruning not in PRUNING_MODES:
            raise ConfigError(
                f"`--pruning` must be one of {', '.join(PRUNING_MODES)}, but got {self.pruning!r}"
            )

    @classmethod
    def from_model(
        cls, model: nn.Module, input_shape: tuple[int, ...] | None = None, pruning: str = "both"
    ) -> SearchSpace:
        """The space of ``model``; with ``input_shape`` the output layer is found by a
        forward pass, otherwise it is taken to be the last Conv2d/Linear."""
        layers = tuple(compressible_layers(model))
        if input_shape is not None:
            from slimtune.compress.structured import output_layers

            fixed = tuple(output_layers(model, tuple(input_shape)))
        else:
            fixed = layers[-1:]
        return cls(layers=layers, pruning=pruning, fixed_channels=fixed)

    @property
    def unstructured(self) -> bool:
        return self.pruning in ("unstructured", "both")

    @property
    def structured(self) -> bool:
        return self.pruning in ("structured", "both")

    def channel_layers(self) -> tuple[str, ...]:
        return tuple(n for n in self.layers if n not in self.fixed_channels)

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        """Ask ``trial`` for every knob; works with a live trial or ``FixedTrial``."""
        layers = {}
        for name in self.layers:
            kw: dict[str, Any] = {}
            if self.unstructured:
                kw["sparsity"] = trial.suggest_float(f"{name}.sparsity", *self.sparsity)
            if self.structured and name not in self.fixed_channels:
                kw["keep_ratio"] = trial.suggest_float(f"{name}.keep_ratio", *self.keep_ratio)
            layers[name] = LayerPlan(
                rank_ratio=trial.suggest_float(f"{name}.rank_ratio", *self.rank_ratio),
                bits=int(trial.suggest_categorical(f"{name}.bits", list(self.bits))),
                **kw,
            )
        return CompressionPlan(
            layers=layers,
            temperature=trial.suggest_float("temperature", *self.temperature, log=True),
            alpha=trial.suggest_float("alpha", *self.alpha),
        )

    def params_of(self, plan: CompressionPlan) -> dict[str, Any]:
        """The study parameters that make :meth:`sample` return ``plan`` (clipped into the
        ranges; knobs the space does not have are dropped)."""

        def clip(v: float, lo_hi: tuple[float, float]) -> float:
            return min(max(v, lo_hi[0]), lo_hi[1])

        params: dict[str, Any] = {}
        for name in self.layers:
            lp = plan.layer(name)
            if self.unstructured:
                params[f"{name}.sparsity"] = clip(lp.sparsity, self.sparsity)
            if self.structured and name not in self.fixed_channels:
                params[f"{name}.keep_ratio"] = clip(lp.keep_ratio, self.keep_ratio)
            params[f"{name}.rank_ratio"] = clip(lp.rank_ratio, self.rank_ratio)
            params[f"{name}.bits"] = lp.bits
        params["temperature"] = clip(plan.temperature, self.temperature)
        params["alpha"] = plan.alpha
        return params

    def plan_from_params(self, params: Mapping[str, Any]) -> CompressionPlan:
        """Replay stored study parameters into a plan (Optuna's ``FixedTrial``)."""
        return self.sample(optuna.trial.FixedTrial(dict(params)))

    def uniform_levels(self) -> list[tuple[float, float, int]]:
        """(sparsity, keep ratio, bits) of the warm start's uniform plans, light to heavy.

        They follow a diagonal through the knobs the space has, so that both costs fall
        together: from about 1/4 of the teacher's size at all its FLOPs (8 bits) down to
        about 1/150 of its size and 1/60 of its FLOPs (90 % sparse, 35 % of the channels,
        2 bits). A front's hypervolume depends on how far it reaches, so the spread goes as
        far as compressing every layer alike sensibly can. The search starts from it and
        breeds non-uniform plans between its points.
        """
        if self.unstructured and self.structured:
            return [(0.0, 1.0, 8), (0.5, 0.75, 4), (0.0, 0.5, 4), (0.75, 1.0, 3),
                    (0.5, 0.5, 4), (0.9, 1.0, 2), (0.75, 0.5, 3), (0.5, 0.35, 2),
                    (0.9, 0.5, 2), (0.9, 0.35, 2)]
        if self.unstructured:
            return [(0.0, 1.0, 8), (0.5, 1.0, 6), (0.6, 1.0, 4), (0.75, 1.0, 4),
                    (0.85, 1.0, 3), (0.9, 1.0, 2), (0.95, 1.0, 2)]
        return [(0.0, 1.0, 8), (0.0, 0.75, 6), (0.0, 0.75, 4), (0.0, 0.5, 4),
                (0.0, 0.5, 3), (0.0, 0.35, 2), (0.0, 0.25, 2)]

    def uniform_plans(self) -> list[CompressionPlan]:
        """Plans that compress every layer alike, from light to heavy (for warm start)."""
        plans = []
        for sparsity, keep, bits in self.uniform_levels():
            plan = CompressionPlan.uniform(
                list(self.layers), sparsity=sparsity, bits=bits, keep_ratio=keep,
                temperature=4.0, alpha=0.7, keep_all=self.fixed_channels,
            )
            plans.append(self.plan_from_params(self.params_of(plan)))
        return plans
