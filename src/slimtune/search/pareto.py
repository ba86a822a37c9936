"""The Pareto front of a study, as plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import optuna
from optuna.trial import TrialState

from slimtune.objectives import dominance
from slimtune.objectives.dominance import nondominated
from slimtune.objectives.table import DEFAULT_OBJECTIVES, OBJECTIVES, objectives_of
from slimtune.units import bits_per_weight

__all__ = ["FrontPoint", "pareto_front", "front_of", "hypervolume", "normalized_losses",
           "feasible"]


@dataclass(frozen=True)
class FrontPoint:
    trial: int
    accuracy: float
    size_bytes: int
    flops: int  # effective MACs (the objective)
    plan: dict[str, Any]
    dense_flops: int | None = None
    bitops: int | None = None
    latency_ms: float | None = None
    #: the other objectives' metrics the trial recorded (e.g. ``stored_weights``)
    extra: dict[str, float] = field(default_factory=dict, compare=False)
    #: the size fixed-width: the upper bound the budget check used (None: a trial of
    #: before entropy coding, whose ``size_bytes`` is fixed-width already)
    fixed_size_bytes: int | None = field(default=None, compare=False)

    @property
    def bits_per_weight(self) -> float | None:
        """Bits of the file per weight it stores (None: the trial did not record its
        stored weights)."""
        return bits_per_weight(self.size_bytes, self.extra.get("stored_weights"))

    def metric(self, name: str) -> float:
        """The value of trial metric ``name`` (``accuracy``, ``size_bytes``, ...)."""
        if name in self.extra:
            return self.extra[name]
        value = getattr(self, name, None)
        if value is None:
            raise KeyError(f"trial {self.trial} has no `{name}`")
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "trial": self.trial,
            "accuracy": self.accuracy,
            "size_bytes": self.size_bytes,
            "flops": self.flops,
            "dense_flops": self.dense_flops,
            "bitops": self.bitops,
            "plan": self.plan,
        }
        if self.latency_ms is not None:
            d["latency_ms"] = self.latency_ms
        d.update(self.extra)
        if self.fixed_size_bytes is not None:
            d["fixed_size_bytes"] = self.fixed_size_bytes
        if self.bits_per_weight is not None:
            d["bits_per_weight"] = self.bits_per_weight
        return d

    @classmethod
    def of(cls, t: optuna.trial.FrozenTrial) -> FrontPoint:
        a = t.user_attrs
        return cls(
            trial=t.number,
            accuracy=float(a["val_accuracy"]),
            size_bytes=int(a["size_bytes"]),
            flops=int(a["flops"]),
            plan=a.get("plan", {}),
            dense_flops=a.get("dense_flops"),
            bitops=a.get("bitops"),
            latency_ms=a.get("latency_ms"),
            extra=_extra(a),
            fixed_size_bytes=a.get("fixed_size_bytes"),
        )

    @classmethod
    def of_results(cls, number: int, out: dict[str, Any]) -> FrontPoint:
        """The point of a trial's results as its task returned them (no plan)."""
        return cls(trial=number, accuracy=float(out["accuracy"]),
                   size_bytes=int(out["size_bytes"]), flops=int(out["flops"]), plan={},
                   latency_ms=out.get("latency_ms"),
                   extra=_extra(out), fixed_size_bytes=out.get("fixed_size_bytes"))


def feasible(t: optuna.trial.FrozenTrial) -> bool:
    """All of the trial's constraints (budgets) hold, as Optuna judges them."""
    return all(c <= 0.0 for c in t.constraints.values())


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """Non-dominated feasible complete trials under the study's objectives, smallest first.

    Trials with identical objective values are kept once (the earliest).
    """
    return front_of(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]),
                    [d.name.lower() for d in study.directions])


def front_of(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[str]
             ) -> list[FrontPoint]:
    """:func:`pareto_front` of trials already read (any states: the complete ones count),
    for a reader that needs every trial anyway and should not read a large study twice."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and feasible(t)]
    front = nondominated(sorted(done, key=lambda t: t.number), lambda t: t.values,
                         list(directions))
    points = [FrontPoint.of(t) for t in front]
    return sorted(points, key=lambda p: (p.size_bytes, -p.accuracy))


def normalized_losses(points: list[FrontPoint], teacher: dict[str, Any],
                      objectives: Sequence[str] = DEFAULT_OBJECTIVES, *,
                      log: bool = False) -> list[list[float]]:
    """Each point as its losses relative to the teacher, one per objective: cost / the
    teacher's cost, ``1 - accuracy`` (:meth:`Objective.loss`). The default objectives give
    (1 - accuracy, size / teacher size, FLOPs / teacher FLOPs). With ``log``, each cost
    on a log scale over three decades (:meth:`Objective.log_loss`)."""
    objs = objectives_of(objectives)
    return [[(o.log_loss if log else o.loss)(p.metric(o.metric), teacher.get(o.metric, 0.0))
             for o in objs] for p in points]


def hypervolume(points: list[FrontPoint], teacher: dict[str, Any],
                objectives: Sequence[str] = DEFAULT_OBJECTIVES, *, log: bool = False) -> float:
    """Hypervolume of ``points`` in the normalized space of :func:`normalized_losses`, with
    reference point 1 on every axis: 0 for nothing better than the teacher's costs at zero
    accuracy, 1 for a free, perfect model. Points outside the reference box add nothing.
    ``log``: the costs' axes in decades (1000x cheaper = 0), where the linear axes
    saturate (every point 50x smaller or more sits within 0.02 of the best)."""
    return dominance.hypervolume(normalized_losses(points, teacher, objectives, log=log))


_FIELDS = {f.name for f in fields(FrontPoint)}


def _extra(metrics: dict[str, Any]) -> dict[str, float]:
    """The objectives' metrics in ``metrics`` that ``FrontPoint`` has no field for."""
    return {o.metric: metrics[o.metric] for o in OBJECTIVES.values()
            if o.metric in metrics and o.metric not in _FIELDS}
