"""The front of a run as plain data: :func:`front_info`, what every view of it draws.

A study is data from outside (a run someone sent): every value read here is checked for
type, and a trial whose numbers are not numbers is left out rather than drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from slimtune.knobs import KNOBS
from slimtune.search.pareto import FrontPoint, feasible, front_of, hypervolume
from slimtune.search.study import Run, open_run

__all__ = ["FrontInfo", "front_info", "plan_summary", "budgets_of", "number", "suggested",
           "SUGGEST_KEEP", "as_run", "point_of"]

#: the accuracy, relative to the teacher's, that the suggested export point keeps
SUGGEST_KEEP = 0.95


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (a missing, boolean or non-numeric value)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


class FrontInfo(NamedTuple):
    run_dir: Path
    dataset: str
    model: str
    teacher: dict[str, Any]
    front: list[FrontPoint]
    others: list[FrontPoint]  # complete trials off the front (dominated or over a budget)
    counts: dict[str, int]
    objectives: tuple[str, ...] = ("accuracy", "size", "flops")
    #: ``max_size`` (bytes), ``max_flops`` (effective MACs), ``min_accuracy``: those set
    budgets: dict[str, float] = {}
    #: trials of ``others`` that break a budget (infeasible)
    infeasible: frozenset[int] = frozenset()
    study_name: str = "slimtune"
    #: the run's study lives in a ``--storage`` database (the export command needs it)
    shared_storage: bool = False

    @property
    def hypervolume(self) -> float:
        return hypervolume(self.front, self.teacher, self.objectives)

    def to_dict(self) -> dict[str, Any]:
        keys = ("accuracy", "size_bytes", "flops", "dense_flops", "bitops", "latency_ms",
                "fixed_size_bytes", "stored_weights")
        return {
            "teacher": {k: self.teacher[k] for k in keys if k in self.teacher},
            "front": [p.to_dict() for p in self.front],
            "hypervolume": self.hypervolume,
        }

    @property
    def has_latency(self) -> bool:
        return any(p.latency_ms is not None for p in self.front)

    @property
    def points(self) -> list[FrontPoint]:
        """Every complete trial, the front first (smallest first), then the others."""
        return [*self.front, *self.others]

    def x_smaller(self, p: FrontPoint) -> float:
        return self.teacher["size_bytes"] / p.size_bytes if p.size_bytes else math.inf

    def x_fewer(self, p: FrontPoint) -> float:
        return self.teacher["flops"] / p.flops if p.flops else math.inf


def budgets_of(config: dict[str, Any]) -> dict[str, float]:
    """The budgets a run's stored config sets (``max_size``, ``max_flops``,
    ``min_accuracy``), those that are numbers."""
    out = {}
    for key in ("max_size", "max_flops", "min_accuracy"):
        v = number(config.get(key))
        if v is not None:
            out[key] = v
    return out


def point_of(t: Any, metrics: list[str]) -> FrontPoint | None:
    """A complete trial as a point, or None when its stored numbers (those of ``metrics``
    included) are not numbers or its plan is not a mapping."""
    try:
        p = FrontPoint.of(t)
    except (KeyError, TypeError, ValueError):
        return None
    return p if _point_ok(p, metrics) and isinstance(p.plan, dict) else None


def as_run(run: str | Path | Run) -> Run:
    """``run``, opened read-only if it is a run directory's path."""
    return run if isinstance(run, Run) else open_run(run)


def front_info(run: str | Path | Run) -> FrontInfo:
    """The front of ``run`` and every other complete trial. A trial that lacks a number
    of the run's objectives (a study made by hand) is left out."""
    from slimtune.objectives.table import objectives_of

    run = as_run(run)
    cfg = run.meta["config"]
    objectives = tuple(o for o in cfg.get("objectives") or () if isinstance(o, str)) \
        or ("accuracy", "size", "flops")
    metrics = [o.metric for o in objectives_of(objectives)]
    trials = run.study.get_trials(deepcopy=False)  # read once: a study may hold thousands
    directions = [d.name.lower() for d in run.study.directions]
    front = [p for p in front_of(trials, directions) if _point_ok(p, metrics)]
    on_front = {p.trial for p in front}
    others = []
    infeasible = set()
    counts = {"complete": 0, "failed": 0, "pruned": 0, "running": 0, "waiting": 0}
    for t in trials:
        key = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned",
               "WAITING": "waiting"}.get(t.state.name, "running")
        counts[key] += 1
        if t.state.name == "COMPLETE" and t.number not in on_front:
            p = point_of(t, metrics)
            if p is None:
                continue
            others.append(p)
            if not feasible(t):
                infeasible.add(t.number)
    return FrontInfo(run.dir, cfg["data"], cfg["model"], run.teacher, front, others, counts,
                     objectives, budgets_of(cfg),
                     frozenset(infeasible), run.study.study_name, run.storage is not None)


def suggested(info: FrontInfo) -> dict[str, Any] | None:
    """The front point to export when you have no rule of your own: the smallest keeping
    :data:`SUGGEST_KEEP` of the teacher's validation accuracy, else the most accurate.
    ``{"trial": n, "why": "..."}``, or None for an empty front."""
    if not info.front:
        return None
    keep = [p for p in info.front if p.accuracy >= SUGGEST_KEEP * info.teacher["accuracy"]]
    if keep:
        pick = min(keep, key=lambda p: p.size_bytes)
        why = f"the smallest keeping {SUGGEST_KEEP * 100:g} % of the teacher's accuracy"
    else:
        pick = max(info.front, key=lambda p: p.accuracy)
        why = "the most accurate"
    return {"trial": pick.trial, "why": why}


def _point_ok(p: FrontPoint, metrics: list[str]) -> bool:
    try:
        return all(number(p.metric(m)) is not None
                   for m in dict.fromkeys(["accuracy", "size_bytes", "flops", *metrics]))
    except KeyError:
        return False


def plan_summary(plan: dict[str, Any], sep: str = "<br>") -> str:
    """One line per layer: ``name: s=0.70 k=1.00 r=0.50 b=4`` (every knob of plan version
    1, then any other knob that changes the layer, e.g. ``2:4``; ``?`` for a layer whose
    values are not valid)."""
    from slimtune.errors import SlimtuneError
    from slimtune.spaces.plan import LayerPlan

    lines = []
    layers = plan.get("layers")
    for n, lp in (layers.items() if isinstance(layers, dict) else ()):
        try:
            values = LayerPlan.from_dict(lp)
        except (SlimtuneError, KeyError, TypeError, ValueError, AttributeError):
            lines.append(f"{n}: ?")
            continue
        parts = [k.summary(values[name]) for name, k in KNOBS.items()
                 if k.always_stored or k.active(values[name])]
        lines.append(f"{n}: {' '.join(parts)}")
    t, a = number(plan.get("temperature")), number(plan.get("alpha"))
    if t is not None and a is not None:
        lines.append(f"T={t:.2f} alpha={a:.2f}")
    return sep.join(lines)
