"""The search space built from a model: one set of knobs per Conv2d / Linear layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from torch import nn

from slimtune.errors import ConfigError
from slimtune.knobs import KNOBS, knob
from slimtune.knobs.base import Choices, FloatRange
from slimtune.ops.structured import output_layers
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from slimtune.spaces.rules import Fixed, Range, SpaceRules

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
    """Which knobs each layer has and their ranges, plus the distillation setting's.

    Parameter names in the Optuna study are ``"<layer>.<knob>"`` for every knob of
    :data:`slimtune.knobs.KNOBS` the space searches on that layer (``sparsity`` only with
    unstructured pruning, ``keep_ratio`` only with structured pruning and never for the
    output layer, opt-in knobs such as ``two_four`` only when named in ``knobs`` or in the
    layer's rule), then ``"temperature"`` and ``"alpha"``. ``ranges`` overrides a knob's
    default range everywhere, ``layer_ranges`` on one layer (from the user's space file,
    :mod:`slimtune.spaces.rules`); a :class:`~slimtune.spaces.rules.Fixed` range is set in
    every plan and is no study parameter. Layers the space file skips are not in
    ``layers``.
    """

    layers: tuple[str, ...]
    pruning: str = "both"
    fixed_channels: tuple[str, ...] = ()  # layers whose outputs are the model's outputs
    knobs: tuple[str, ...] = ()  # opt-in knobs searched too (e.g. "two_four")
    ranges: Mapping[str, FloatRange | Choices] = field(default_factory=dict)
    temperature: tuple[float, float] = (1.0, 20.0)  # sampled on a log scale
    alpha: tuple[float, float] = (0.0, 1.0)
    layer_ranges: Mapping[str, Mapping[str, Range]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pruning not in PRUNING_MODES:
            raise ConfigError(
                f"`--pruning` must be one of {', '.join(PRUNING_MODES)}, but got {self.pruning!r}"
            )
        for name in (*self.knobs, *self.ranges):
            knob(name)  # an unknown name is one ConfigError listing the known ones
        extra = [n for n in self.knobs if not KNOBS[n].opt_in]
        if extra:
            raise ConfigError(f"`--knob` names opt-in knobs; {extra[0]} is always searched")

    @classmethod
    def from_model(
        cls, model: nn.Module, input_shape: tuple[int, ...] | None = None, pruning: str = "both",
        knobs: tuple[str, ...] = (), rules: SpaceRules | Mapping[str, Any] | None = None,
    ) -> SearchSpace:
        """The space of ``model``; with ``input_shape`` the output layer is found by a
        forward pass, otherwise it is taken to be the last Conv2d/Linear. ``rules``: the
        user's space file (parsed, or its plain data), checked against the model's layers
        here."""
        layers = tuple(compressible_layers(model))
        fixed = tuple(output_layers(model, tuple(input_shape))) if input_shape is not None \
            else layers[-1:]
        space = cls(layers=layers, pruning=pruning, fixed_channels=fixed, knobs=tuple(knobs))
        return space.with_rules(rules) if rules else space

    def with_rules(self, rules: SpaceRules | Mapping[str, Any]) -> SearchSpace:
        """This space narrowed by the user's space file: skipped layers dropped, each
        layer's knobs given the ranges of the first rule that matches it."""
        from dataclasses import replace

        if not isinstance(rules, SpaceRules):
            rules = SpaceRules.from_dict(dict(rules))
        chosen = rules.resolve(list(self.layers))
        per_layer: dict[str, dict[str, Range]] = {}
        for name, rule in chosen.items():
            if rule is None or rule.skip:
                continue
            for k, r in rule.knobs.items():
                searched = KNOBS[k].in_space(self, name) or KNOBS[k].opt_in
                if searched:
                    per_layer.setdefault(name, {})[k] = r
                elif rule.key == name and not (isinstance(r, Fixed)
                                               and r.value == KNOBS[k].default):
                    why = ("an output layer keeps its channels" if k == "keep_ratio"
                           and name in self.fixed_channels
                           else f"`--pruning {self.pruning}` does not search it")
                    raise ConfigError(f"rule `{name}` of the space file sets `{k}`, but {why}")
        layers = tuple(n for n in self.layers if not (chosen[n] and chosen[n].skip))
        return replace(self, layers=layers, layer_ranges=per_layer,
                       temperature=rules.temperature or self.temperature,
                       alpha=rules.alpha or self.alpha)

    @property
    def unstructured(self) -> bool:
        return self.pruning in ("unstructured", "both")

    @property
    def structured(self) -> bool:
        return self.pruning in ("structured", "both")

    def channel_layers(self) -> tuple[str, ...]:
        return tuple(n for n in self.layers if n not in self.fixed_channels)

    def range_of(self, name: str, layer: str | None = None) -> Range:
        """Knob ``name``'s range (on ``layer``: its rule's, if it sets one)."""
        on_layer = self.layer_ranges.get(layer, {}) if layer is not None else {}
        if name in on_layer:
            return on_layer[name]
        return self.ranges.get(name, KNOBS[name].space)

    def _in_space(self, layer: str) -> list[str]:
        return [n for n, k in KNOBS.items()
                if k.in_space(self, layer) or n in self.layer_ranges.get(layer, {})]

    def knobs_of(self, layer: str) -> list[str]:
        """The knobs the space searches on ``layer`` (a study parameter each), in registry
        order; a knob the space file fixes is not searched (:meth:`fixed_of`)."""
        return [n for n in self._in_space(layer)
                if not isinstance(self.range_of(n, layer), Fixed)]

    def fixed_of(self, layer: str) -> dict[str, Any]:
        """The knobs the space file fixes on ``layer``, with their values."""
        return {n: r.value for n in self._in_space(layer)
                if isinstance(r := self.range_of(n, layer), Fixed)}

    def sample(self, trial: optuna.trial.BaseTrial) -> CompressionPlan:
        """Ask ``trial`` for every knob; works with a live trial or ``FixedTrial``."""
        layers = {
            name: LayerPlan(**{k: self.range_of(k, name).suggest(trial, f"{name}.{k}")
                               for k in self.knobs_of(name)}, **self.fixed_of(name))
            for name in self.layers
        }
        return CompressionPlan(
            layers=layers,
            temperature=trial.suggest_float("temperature", *self.temperature, log=True),
            alpha=trial.suggest_float("alpha", *self.alpha),
        )

    def params_of(self, plan: CompressionPlan) -> dict[str, Any]:
        """The study parameters that make :meth:`sample` return ``plan`` (clipped into the
        ranges; knobs the space does not have are dropped)."""
        params: dict[str, Any] = {}
        for name in self.layers:
            lp = plan.layer(name)
            for k in self.knobs_of(name):
                params[f"{name}.{k}"] = self.range_of(k, name).clip(lp[k])
        params["temperature"] = min(max(plan.temperature, self.temperature[0]),
                                    self.temperature[1])
        params["alpha"] = min(max(plan.alpha, self.alpha[0]), self.alpha[1])
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
