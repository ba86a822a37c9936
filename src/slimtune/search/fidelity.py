"""Multi-objective asynchronous successive halving: which plan to fine-tune further next.

The fidelity ladder (shared DESIGN.md, "Fidelity"): rung 0 is a plan's compressed student
after a BatchNorm re-estimation, with no gradient step; each later rung fine-tunes it
further, continuing from its weights, up to the full ``--epochs``. A plan moves up a rung
only while it is competitive among the plans that reached the same rung: ranked by
non-dominated sorting on (its exact costs, its accuracy at that rung), then within a front
by the hypervolume only it adds (costs relative to the teacher's, in decades), the top
``1 / eta`` of them may be promoted, and never more than ``floor(n / eta)`` of the ``n``
plans at a rung in all (``promotion="hypervolume"``). MO-ASHA as published (Schmucker et
al. 2021, on ASHA, Li et al. 2020; ``promotion="moasha"``) ranks within a front by crowding
distance and promotes every plan that is ever in the top ``1 / eta``: crowding ranks every
front's extremes first, so the smallest plan at a rung goes up however inaccurate it is,
and while a rung is young its top third changes with every result, so early plans go up
by the dozen (11 of the first 16 on vgg_small). Asynchronous either way: a free worker is
given the best promotion that is due, from the highest rung down, or else a new plan; it
never waits for a rung to fill.

This module is the scheduler alone, plain data in and out (no Ray, no Optuna), so the
engine can stay a loop: ``job = s.next_job()`` (a promotion, or ``None``: sample a new
plan and ``s.add(...)`` it), and ``s.report(plan, rung, accuracy)`` when a job returns.
:meth:`MOASHA.from_records` rebuilds the state from stored results (resume at any rung).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from slimtune.errors import ConfigError
from slimtune.objectives.dominance import dominates, hypervolume
from slimtune.objectives.table import log_cost_loss

__all__ = ["Job", "Result", "MOASHA", "nondominated_fronts", "crowding", "contributions",
           "ranked", "PROMOTIONS"]

#: how plans of one non-dominated front are ordered for promotion
PROMOTIONS = ("hypervolume", "moasha")


@dataclass(frozen=True)
class Job:
    """Fine-tune ``plan`` from rung ``start`` (its weights there) up to rung ``rung``."""

    plan: int
    rung: int
    start: int


@dataclass(frozen=True)
class Result:
    plan: int
    rung: int
    costs: tuple[float, ...]  # exact before training: size, FLOPs ... (lower is better)
    accuracy: float


def nondominated_fronts(points: Sequence[Sequence[float]], directions: Sequence[str]
                        ) -> list[list[int]]:
    """Indices of ``points`` by non-dominated front, best first (fast non-dominated sort
    in O(n^2), plenty for the hundreds of plans of one rung)."""
    n = len(points)
    beats: list[list[int]] = [[] for _ in range(n)]
    beaten = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j], directions):
                beats[i].append(j)
                beaten[j] += 1
            elif dominates(points[j], points[i], directions):
                beats[j].append(i)
                beaten[i] += 1
    fronts, current = [], [i for i in range(n) if beaten[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in beats[i]:
                beaten[j] -= 1
                if beaten[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point of ``front`` within it (the extremes of
    every axis: infinite)."""
    out = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for axis in range(len(points[front[0]])):
        order = sorted(front, key=lambda i: points[i][axis])
        lo, hi = points[order[0]][axis], points[order[-1]][axis]
        out[order[0]] = out[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, b, c in zip(order, order[1:], order[2:], strict=False):
            out[b] += (points[c][axis] - points[a][axis]) / (hi - lo)
    return out


def contributions(losses: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """Each point of ``front``'s exclusive hypervolume contribution: the volume only it
    dominates among the front (``losses``: every axis a loss, reference point 1)."""
    total = hypervolume([losses[i] for i in front])
    return {i: total - hypervolume([losses[j] for j in front if j != i]) for i in front}


def ranked(points: Sequence[Sequence[float]], directions: Sequence[str],
           losses: Sequence[Sequence[float]] | None = None) -> list[int]:
    """Indices of ``points`` best first: by non-dominated front, then by hypervolume
    contribution within it when ``losses`` (the points as losses in the unit box) are
    given, else by crowding distance (more isolated first), then by index (earlier
    first)."""
    order: list[int] = []
    for front in nondominated_fronts(points, directions):
        score = crowding(points, front) if losses is None else contributions(losses, front)
        order += sorted(front, key=lambda i: (-score[i], i))
    return order


@dataclass
class MOASHA:
    """The scheduler's state: results per rung, and which plans were promoted from each.

    ``rungs``: the fine-tune epochs each rung has reached, strictly rising, the first 0
    (rung 0, BatchNorm re-estimation only; with ``rungs[0] > 0`` there is no rung 0, as in
    MO-ASHA as published). ``eta``: of the plans at a rung, the top ``1 / eta`` may go up.
    ``directions``: of the costs (each ``"minimize"``); accuracy is maximized.
    ``promotion`` (:data:`PROMOTIONS`): ``"hypervolume"`` (the default of a search)
    needs ``reference``, the costs of the model the plans compress (the teacher's), each
    cost read as ``1 - log10(reference / cost) / 3`` capped to [0, 1] (the log
    hypervolume of ``bench/hypervolume.py``: the linear one sees no difference between
    50x and 500x); ``"moasha"`` is MO-ASHA as published (crowding, no quota on the total).
    """

    rungs: tuple[float, ...]
    eta: int = 3
    directions: tuple[str, ...] = ("minimize", "minimize")
    promotion: str = "moasha"
    reference: tuple[float, ...] | None = None
    results: list[dict[int, Result]] = field(default_factory=list)
    promoted: list[set[int]] = field(default_factory=list)
    running: set[tuple[int, int]] = field(default_factory=set)  # (plan, rung) in flight
    _rankings: dict[int, list[int]] = field(default_factory=dict, repr=False)  # per rung

    def __post_init__(self) -> None:
        self.rungs = tuple(float(r) for r in self.rungs)
        if not self.rungs or any(b <= a for a, b in zip(self.rungs, self.rungs[1:],
                                                        strict=False)) or self.rungs[0] < 0:
            raise ConfigError(f"`rungs` must be rising fine-tune epochs from 0 or more, but "
                              f"got {list(self.rungs)}")
        if self.eta < 2:
            raise ConfigError(f"`eta` must be at least 2, but got {self.eta}")
        if self.promotion not in PROMOTIONS:
            raise ConfigError(f"`promotion` must be one of {', '.join(PROMOTIONS)}, but got "
                              f"{self.promotion!r}")
        if self.promotion == "hypervolume" and (
                self.reference is None or len(self.reference) != len(self.directions)
                or not all(r > 0 for r in self.reference)):
            raise ConfigError(f"promotion by hypervolume needs `reference`: one positive cost "
                              f"per cost axis ({len(self.directions)}), but got "
                              f"{self.reference}")
        self.results = self.results or [{} for _ in self.rungs]
        self.promoted = self.promoted or [set() for _ in self.rungs]

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    # -- the interface ---------------------------------------------------------------
    def add(self, plan: int) -> Job:
        """A new plan: its first job (rung 0, from nothing)."""
        self.running.add((plan, 0))
        return Job(plan, 0, -1)

    def next_job(self, affordable: Callable[[int], bool] | None = None) -> Job | None:
        """The promotion due now, from the highest rung down (None: start a new plan).
        ``affordable(rung)``: whether a promotion from ``rung`` may start now (the budget)."""
        for rung in range(self.top - 1, -1, -1):
            if affordable is not None and not affordable(rung):
                continue
            plan = self._promotable(rung)
            if plan is not None:
                self.promoted[rung].add(plan)
                self.running.add((plan, rung + 1))
                return Job(plan, rung + 1, rung)
        return None

    def report(self, plan: int, rung: int, costs: Sequence[float], accuracy: float) -> None:
        """A job's result: ``plan`` reached ``rung`` with ``accuracy`` (validation)."""
        self.running.discard((plan, rung))
        self._rankings.pop(rung, None)
        self.results[rung][plan] = Result(plan, rung, tuple(float(c) for c in costs),
                                          float(accuracy))

    def forget(self, plan: int, rung: int) -> None:
        """A job that failed or was interrupted: it no longer runs (and is not promoted)."""
        self.running.discard((plan, rung))

    def top_results(self) -> list[Result]:
        """The results of the top rung: the only ones that may make the front."""
        return list(self.results[self.top].values())

    # -- resume ------------------------------------------------------------------------
    @classmethod
    def from_records(cls, rungs: Sequence[float], records: Iterable[Result], eta: int = 3,
                     directions: Sequence[str] = ("minimize", "minimize"),
                     promotion: str = "moasha",
                     reference: Sequence[float] | None = None) -> MOASHA:
        """The state of a search from its stored results: a plan with a result at rung
        ``k > 0`` was promoted from every rung below it."""
        s = cls(tuple(rungs), eta, tuple(directions), promotion,
                None if reference is None else tuple(float(r) for r in reference))
        for r in records:
            s.results[r.rung][r.plan] = r
            for below in range(r.rung):
                s.promoted[below].add(r.plan)
        return s

    # -- the rule ----------------------------------------------------------------------
    def _promotable(self, rung: int) -> int | None:
        """The best plan at ``rung`` that is among its top ``1 / eta``, not yet promoted
        and not already running above (ASHA's rule); by hypervolume, only while fewer than
        ``floor(n / eta)`` have gone up from it."""
        done = list(self.results[rung].values())
        quota = len(done) // self.eta
        if quota == 0 or (self.promotion == "hypervolume" and len(self.promoted[rung]) >= quota):
            return None
        for i in self._ranking(rung, done)[:quota]:
            plan = done[i].plan
            if plan not in self.promoted[rung] and (plan, rung + 1) not in self.running:
                return plan
        return None

    def _ranking(self, rung: int, done: list[Result]) -> list[int]:
        """:func:`ranked` of the results ``done`` at ``rung`` (kept until a result
        arrives there: the hypervolume contributions cost a moment per plan)."""
        if rung in self._rankings:  # dropped by report() when a result arrives there
            return self._rankings[rung]
        points = [(*r.costs, r.accuracy) for r in done]
        losses = None
        if self.promotion == "hypervolume":
            assert self.reference is not None
            losses = [(*(log_cost_loss(c, ref) for c, ref in zip(r.costs, self.reference,
                                                                strict=True)),
                       1.0 - r.accuracy) for r in done]
        order = ranked(points, (*self.directions, "maximize"), losses)
        self._rankings[rung] = order
        return order

    def counts(self) -> dict[str, list[int]]:
        """Per rung: plans with a result there, and plans promoted from it."""
        return {"reached": [len(r) for r in self.results],
                "promoted": [len(p) for p in self.promoted]}

