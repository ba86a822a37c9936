"""A one-shot allocator: per-layer settings for a cost target, with no search.

The baseline issue 12's search must beat at the same fine-tune budget (in the spirit of
NVIDIA ModelOpt's ``auto_quantize``: per-layer sensitivity scores, then a choice of each
layer's setting under a budget, no trial fine-tunes). From the sensitivity pass the guided
plans already use (:class:`~slimtune.search.guided.Sensitivity`), the greedy path that
weighs the target's cost (the most predicted cost saved per predicted accuracy lost, one
knob of one layer a level heavier at a time) is followed until the predicted cost meets
the target: a greedy knapsack. Each plan is then fine-tuned with the full ``--epochs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from slimtune.errors import ConfigError
from slimtune.search.guided import Sensitivity, _plan, greedy_path
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace

__all__ = ["one_shot_plans", "TARGETS"]

#: (cost, fraction of the teacher's): issue 12's budgets along the front
TARGETS: tuple[tuple[str, float], ...] = (
    ("flops", 0.25), ("flops", 0.1), ("flops", 0.05), ("size", 0.02), ("size", 0.01))
#: cost -> (weight of size in the greedy's cost, index of the cost in Sensitivity.predict)
_AXES = {"size": (0.75, 0), "flops": (0.25, 1)}


def one_shot_plans(sens: Sensitivity, space: SearchSpace,
                   targets: Sequence[tuple[str, float]] = TARGETS) -> list[CompressionPlan]:
    """One plan per target ``(cost, fraction)``: the first state of the greedy path for
    that cost whose predicted cost is at most ``fraction`` of the teacher's (the heaviest
    state if none is). Plans repeat when two targets meet at the same state."""
    plans = []
    paths: dict[str, list] = {}
    for cost, fraction in targets:
        if cost not in _AXES:
            raise ConfigError(f"a one-shot target's cost must be size or flops, but got "
                              f"{cost!r}")
        if not 0 < fraction <= 1:
            raise ConfigError(f"`0 < fraction <= 1` must hold for a one-shot target, but got "
                              f"{fraction}")
        weight, index = _AXES[cost]
        path = paths.setdefault(cost, greedy_path(sens, space, weight))
        state = next((s for s in path if sens.predict(s)[index] <= fraction), path[-1])
        plans.append(space.plan_from_params(space.params_of(_plan(state))))
    return plans
