"""A one-shot allocator: per-layer settings for a cost target, with no search.

The baseline issue 12's search must beat at the same fine-tune budget (in the spirit of
NVIDIA ModelOpt's ``auto_quantize``: per-layer sensitivity scores, then a choice of each
layer's setting under a budget, no trial fine-tunes). From the sensitivity pass the guided
plans already use (:class:`~slimtune.search.guided.Sensitivity`), the greedy path that
weighs the target's cost (the most predicted cost saved per predicted accuracy lost, one
knob of one layer a level heavier at a time) is followed until the predicted cost meets
the target: a greedy knapsack. Each plan is then fine-tuned with the full ``--epochs``.

:func:`spread_plans` gives ``n`` such plans for targets spread along the front: the
allocator's arm of ``bench/hypervolume.py``, and part of the multi-fidelity search's warm
start (screened at rung 0, where a plan costs no fine-tune epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

from slimtune.errors import ConfigError
from slimtune.search.guided import Sensitivity, _plan, greedy_path
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace

__all__ = ["one_shot_plans", "spread_targets", "spread_plans", "TARGETS"]

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


#: the range :func:`spread_targets` spreads over, as fractions of the teacher's cost
SPREAD = {"flops": (0.5, 0.02), "size": (0.2, 0.004)}


def spread_targets(n: int) -> list[tuple[str, float]]:
    """``n`` targets alternating FLOPs (0.5x down to 0.02x) and size (0.2x down to 0.004x),
    log-spaced, in a bit-reversed order: the first of them already span the range coarsely
    (a run that stops early, or a budget read from the start of a longer one, covers the
    front)."""
    half = (n + 1) // 2

    def spread(hi: float, lo: float) -> list[float]:
        order = sorted(range(half), key=lambda i: int(f"{i:06b}"[::-1], 2))
        return [hi * (lo / hi) ** (i / max(1, half - 1)) for i in order]
    out = []
    for f, z in zip(spread(*SPREAD["flops"]), spread(*SPREAD["size"]), strict=True):
        out += [("flops", f), ("size", z)]
    return out[:n]


def spread_plans(sens: Sensitivity, space: SearchSpace, n: int) -> list[CompressionPlan]:
    """The first ``n`` distinct one-shot plans along :func:`spread_targets` (two targets
    often meet at one plan: more targets are read until there are ``n``, or none are
    left)."""
    out, seen = [], set()
    for plan in one_shot_plans(sens, space, spread_targets(8 * n)):  # each path walked once
        key = repr(sorted(space.params_of(plan).items()))
        if key not in seen:
            seen.add(key)
            out.append(plan)
        if len(out) == n:
            break
    return out
