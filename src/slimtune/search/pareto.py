"""The Pareto front of a study, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

__all__ = ["FrontPoint", "pareto_front", "hypervolume", "normalized_losses"]


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
        )


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """Non-dominated complete trials under the study's objectives, smallest first.

    Trials with identical objective values are kept once (the earliest).
    """
    seen: set[tuple[float, ...]] = set()
    points = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        key = tuple(t.values)
        if key in seen:
            continue
        seen.add(key)
        points.append(FrontPoint.of(t))
    return sorted(points, key=lambda p: (p.size_bytes, -p.accuracy))


def normalized_losses(points: list[FrontPoint], teacher: dict[str, Any]) -> list[list[float]]:
    """Each point as (size / teacher size, FLOPs / teacher FLOPs, 1 - accuracy)."""
    return [[p.size_bytes / teacher["size_bytes"], p.flops / teacher["flops"], 1.0 - p.accuracy]
            for p in points]


def hypervolume(points: list[FrontPoint], teacher: dict[str, Any]) -> float:
    """Hypervolume of ``points`` in the normalized space of :func:`normalized_losses`, with
    reference point (1, 1, 1): 0 for nothing better than the teacher's size and FLOPs at zero
    accuracy, 1 for a free, perfect model. Points outside the reference box add nothing."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume  # private: wrapped here only

    losses = [x for x in normalized_losses(points, teacher) if all(v < 1.0 for v in x)]
    if not losses:
        return 0.0
    return float(compute_hypervolume(np.asarray(losses), np.ones(3), assume_pareto=False))
