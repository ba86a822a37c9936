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
