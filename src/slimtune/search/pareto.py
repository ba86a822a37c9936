"""The Pareto front of a study, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

__all__ = ["FrontPoint", "pareto_front"]


@dataclass(frozen=True)
class FrontPoint:
    trial: int
    accuracy: float
    size_bytes: int
    flops: int
    plan: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "accuracy": self.accuracy,
            "size_bytes": self.size_bytes,
            "flops": self.flops,
            "plan": self.plan,
        }


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """Non-dominated complete trials (accuracy up, size and FLOPs down), smallest first.

    Trials with identical objective values are kept once (the earliest).
    """
    seen: set[tuple[float, ...]] = set()
    points = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        key = tuple(t.values)
        if key in seen:
            continue
        seen.add(key)
        points.append(
            FrontPoint(
                trial=t.number,
                accuracy=float(t.values[0]),
                size_bytes=int(t.values[1]),
                flops=int(t.values[2]),
                plan=t.user_attrs.get("plan", {}),
            )
        )
    return sorted(points, key=lambda p: (p.size_bytes, -p.accuracy))
