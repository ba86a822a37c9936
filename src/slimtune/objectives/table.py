"""The objective table: name -> what it measures, which way is better, and how.

A new objective is one function of a :class:`~slimtune.objectives.measure.Measured` (the
exported artifact, the model decoded from it, its FLOPs report, the validation split)
and one line in :data:`OBJECTIVES`. Everything else (the study's metric names and
directions, the front, the hypervolume, early stopping, ``--objectives``) reads the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimtune.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.objectives.measure import Measured

__all__ = ["Objective", "OBJECTIVES", "DEFAULT_OBJECTIVES", "objective", "objectives_of",
           "by_metric", "log_cost_loss"]


@dataclass(frozen=True)
class Objective:
    name: str  # as ``--objectives`` names it
    metric: str  # key in a trial's results and user attributes, with its unit in it
    direction: str  # "maximize" or "minimize"
    measure: Callable[[Measured], float]
    #: exact from the plan before any training (size, FLOPs, weights): a plan over a budget
    #: is not trained, and early stopping compares on these
    before_training: bool = False
    label: str = ""  # for axes and tables

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"`direction` must be maximize or minimize, but got "
                             f"{self.direction!r}")

    def loss(self, value: float, teacher: float) -> float:
        """``value`` as a loss relative to the teacher (1 = as costly as the teacher, or
        zero accuracy): the hypervolume's axis, reference point 1."""
        if self.direction == "maximize":
            return 1.0 - value
        return value / teacher if teacher else float("inf")

    def log_loss(self, value: float, teacher: float, decades: float = 3.0) -> float:
        """Like :meth:`loss`, with a cost on a log scale: ``1 - log10(teacher / value) /
        decades``, capped to [0, 1] (1 = as costly as the teacher, 0 = ``10**decades``
        times cheaper or better). The linear loss saturates: 50x and 500x smaller differ
        by 0.018 in it, by 0.33 in this one."""
        if self.direction == "maximize":
            return 1.0 - value
        return log_cost_loss(value, teacher, decades)


def log_cost_loss(value: float, teacher: float, decades: float = 3.0) -> float:
    """A cost ``value`` as a loss on a log scale relative to the ``teacher``'s: 1 as costly,
    0 ``10**decades`` times cheaper, capped to [0, 1] (:meth:`Objective.log_loss`)."""
    import math

    if value <= 0 or not teacher:
        return 0.0 if value <= 0 else math.inf
    return 1.0 - min(1.0, max(0.0, math.log10(teacher / value) / decades))


def _accuracy(m: Measured) -> float:
    return m.accuracy()


def _size(m: Measured) -> float:
    return len(m.blob)


def _flops(m: Measured) -> float:
    return m.flops.effective


def _latency(m: Measured) -> float:
    return m.latency_ms()


def _stored_weights(m: Measured) -> float:
    """Weights the artifact stores in its Conv2d / Linear layers: the kept ones of each
    compressed layer, all of any other."""
    from torch import nn

    return sum(m.stored[n][0] if n in m.stored else mod.weight.numel()
               for n, mod in m.model.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear))


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("accuracy", "accuracy", "maximize", _accuracy, label="validation accuracy"),
    Objective("size", "size_bytes", "minimize", _size, before_training=True,
              label="size on disk (bytes)"),
    Objective("flops", "flops", "minimize", _flops, before_training=True,
              label="effective MACs"),
    Objective("latency", "latency_ms", "minimize", _latency, label="latency (ms)"),
    Objective("weights", "stored_weights", "minimize", _stored_weights, before_training=True,
              label="stored weights"),
)}
DEFAULT_OBJECTIVES = ("accuracy", "size", "flops")


def objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"`--objectives` must be names from {', '.join(OBJECTIVES)}, but "
                          f"got {name!r}") from None


def objectives_of(names: Iterable[str]) -> list[Objective]:
    return [objective(n) for n in names]


def by_metric(metric: str) -> Objective:
    """The objective whose trial metric is ``metric``."""
    for o in OBJECTIVES.values():
        if o.metric == metric:
            return o
    raise KeyError(metric)


