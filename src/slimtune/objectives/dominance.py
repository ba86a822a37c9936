"""Pareto maths on plain numbers: one dominance rule for the front, the hypervolume and
early stopping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["dominates", "nondominated", "hypervolume"]

T = TypeVar("T")


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is no worse than ``b`` on every axis and better on one (each axis
    ``"maximize"`` or ``"minimize"``)."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def nondominated(items: Sequence[T], values: Callable[[T], Sequence[float]],
                 directions: Sequence[str], *, unique: bool = True) -> list[T]:
    """The items no other item dominates, in their order; with ``unique`` an item whose
    values equal an earlier one's is dropped (the earlier is kept)."""
    import numpy as np

    vals = [tuple(float(x) for x in values(i)) for i in items]
    if not vals:
        return []
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    loss = np.asarray(vals, dtype=float) * sign  # every axis: lower is better
    out, seen = [], set()
    for i, v in enumerate(vals):  # vectorized per item: O(n^2) comparisons in numpy
        if unique and v in seen:
            continue
        beaten = (loss <= loss[i]).all(axis=1) & (loss < loss[i]).any(axis=1)
        if not beaten.any():
            out.append(items[i])
            seen.add(v)
    return out


def hypervolume(losses: Sequence[Sequence[float]]) -> float:
    """The volume the points ``losses`` (every axis a loss, reference point 1 on each)
    dominate inside the unit box; points outside the box add nothing."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume  # private: wrapped here only

    inside = [list(x) for x in losses if all(v < 1.0 for v in x)]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.asarray(inside), np.ones(len(inside[0])),
                                     assume_pareto=False))
