"""What each point does to each layer, as plain data (:func:`plan_info`): layers x knobs
for every point, each value as the report prints it and as a compression strength in
[0, 1] (:meth:`slimtune.knobs.Knob.strength`: 0 leaves the layer alone), so a heatmap
shows at a glance which layers the search spares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from slimtune.errors import SlimtuneError
from slimtune.knobs import KNOBS
from slimtune.search.study import Run
from slimtune.viz.front import FrontInfo, as_run, front_info, number

__all__ = ["PointPlan", "PlanInfo", "plan_info", "plans_of", "value_text"]


class PointPlan(NamedTuple):
    trial: int | None  # None: the teacher (every layer untouched)
    #: [layer][knob]: the value as printed, and its strength in [0, 1] (None: unreadable)
    text: list[list[str]]
    strength: list[list[float | None]]
    temperature: float | None
    alpha: float | None


class PlanInfo(NamedTuple):
    layers: list[str]
    knobs: list[str]  # knob names, in registry order
    labels: list[str]  # how the report names them
    teacher: PointPlan
    points: dict[int, PointPlan]  # every complete trial of the run

    def column(self, knob: str, trials: list[int]) -> list[list[float | None]]:
        """[layer][i]: the strength of ``knob`` on each layer for ``trials[i]``."""
        k = self.knobs.index(knob)
        return [[self.points[t].strength[i][k] for t in trials]
                for i in range(len(self.layers))]


def value_text(value: Any) -> str:
    """A knob's value in a cell: ``0.70``, ``4``, ``on``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _layers(meta_layers: Any, plans: list[dict[str, Any]]) -> list[str]:
    """The run's compressible layers in model order (the study's list when it is one,
    else every layer a plan names, in the order first named)."""
    if isinstance(meta_layers, list) and all(isinstance(n, str) for n in meta_layers):
        return list(meta_layers)
    seen: dict[str, None] = {}
    for plan in plans:
        layers = plan.get("layers")
        if isinstance(layers, dict):
            seen.update((str(n), None) for n in layers)
    return list(seen)


def _point_plan(trial: int | None, plan: dict[str, Any], layers: list[str],
                knobs: list[str]) -> PointPlan:
    from slimtune.spaces.plan import LayerPlan

    given = plan.get("layers") if isinstance(plan.get("layers"), dict) else {}
    text, strength = [], []
    for name in layers:
        lp = given.get(name)
        try:
            values = LayerPlan.from_dict(lp) if isinstance(lp, dict) else LayerPlan()
        except (SlimtuneError, KeyError, TypeError, ValueError):
            text.append(["?"] * len(knobs))
            strength.append([None] * len(knobs))
            continue
        text.append([value_text(values[k]) for k in knobs])
        strength.append([KNOBS[k].strength(values[k]) for k in knobs])
    return PointPlan(trial, text, strength, number(plan.get("temperature")),
                     number(plan.get("alpha")))


def plan_info(run: str | Path | Run, front: FrontInfo | None = None) -> PlanInfo:
    """The per-layer plan of every complete trial of ``run`` and of the teacher, layers
    in the model's order. ``front``: the run's :func:`front_info` when already read."""
    run = as_run(run)
    return plans_of(front or front_info(run), run.meta.get("layers"))


def plans_of(front: FrontInfo, meta_layers: Any = None) -> PlanInfo:
    """The per-layer plan of every point of ``front`` and of the teacher, over the layers
    ``meta_layers`` (the study's list). The knobs shown: those every plan stores, and any
    other one a point uses."""
    points = front.points
    plans = [p.plan for p in points]
    layers = _layers(meta_layers, plans)
    used = set()
    for plan in plans:
        for lp in (plan.get("layers") or {}).values():
            if isinstance(lp, dict):
                used.update(k for k, v in lp.items()
                            if k in KNOBS and v is not None and v != KNOBS[k].default)
    knobs = [n for n, k in KNOBS.items() if k.always_stored or n in used]
    return PlanInfo(
        layers, knobs, [KNOBS[k].label or k for k in knobs],
        _point_plan(None, {}, layers, knobs),
        {p.trial: _point_plan(p.trial, p.plan, layers, knobs) for p in points})
