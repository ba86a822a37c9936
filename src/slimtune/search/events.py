"""What a search reports: progress callbacks (``SearchEvents``), the record of a finished
trial they receive (``TrialRecord``) and the result of the whole search (``SearchResult``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from slimtune.objectives.table import OBJECTIVES
from slimtune.search.pareto import FrontPoint
from slimtune.search.study import Run

__all__ = ["SearchEvents", "SearchResult", "TrialRecord"]

#: the metrics a trial function returns, stored in the trial's user attributes (accuracy
#: as ``val_accuracy``) and measured the same way for the teacher: every objective's
#: metric, the dense FLOPs and bit operations, and the fixed-width size (the upper bound
#: of ``size_bytes`` the budget check used)
_METRICS = (*(o.metric for o in OBJECTIVES.values()), "dense_flops", "bitops",
            "fixed_size_bytes")


@dataclass
class SearchEvents:
    """Callbacks for progress display; every one is optional."""

    teacher_epoch: Callable[[int, int, float], None] | None = None
    teacher_step: Callable[[int, int], None] | None = None
    teacher_ready: Callable[[dict[str, Any], str], None] | None = None  # (metrics, source)
    sensitivity: Callable[[int, int], None] | None = None  # (layers, tasks): pass begins
    guided: Callable[[float, int], None] | None = None  # (seconds, plans): pass done
    warning: Callable[[str], None] | None = None  # something went wrong, the search goes on
    note: Callable[[str], None] | None = None  # what the search waits for or did, one line
    started: Callable[[int, int], None] | None = None  # (trials to run, concurrency)
    trial_done: Callable[[TrialRecord, dict[str, Any]], None] | None = None
    #: the multi-fidelity search begins: (budget in fine-tune epochs, rungs, concurrency)
    ladder_started: Callable[[float, tuple[float, ...], int], None] | None = None


@dataclass
class SearchResult:
    run: Run
    front: list[FrontPoint]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class TrialRecord:
    """What a progress display needs of a finished trial (no storage round trip)."""

    number: int
    state: TrialState
    user_attrs: dict[str, Any]
    values: list[float] | None
    constraints: dict[str, float] = field(default_factory=dict)

    @property
    def infeasible(self) -> bool:
        """It violates a constraint (``--min-accuracy``, a budget)."""
        return any(v > 0 for v in self.constraints.values())

    def x_smaller(self, teacher: dict[str, Any]) -> float:
        """How many times smaller than ``teacher`` (its metrics) it is."""
        return teacher["size_bytes"] / self.user_attrs["size_bytes"]

    def x_fewer(self, teacher: dict[str, Any]) -> float:
        """How many times fewer effective MACs than ``teacher`` it needs."""
        return teacher["flops"] / max(self.user_attrs["flops"], 1)
