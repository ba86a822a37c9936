"""How the search got there, as plain data: the front's hypervolume after every finished
job, against jobs finished and against fine-tune epochs spent, with each job's phase
(warm start, sampler) and rung (:func:`history_info`).

Each job is placed by the time it finished. The hypervolume is recomputed from the
trials themselves (the study's feasible top-rung results), so a run of any version reads
the same way; in a multi-fidelity run the screening study's rung-0 jobs count too (they
spend no epoch and move no hypervolume, but they are most of the jobs).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune.objectives.dominance import dominates, nondominated
from slimtune.objectives.table import objectives_of
from slimtune.search.pareto import FrontPoint, feasible, hypervolume
from slimtune.search.study import Run
from slimtune.viz.front import FrontInfo, as_run, front_info, number, point_of

__all__ = ["HistoryEvent", "HistoryInfo", "history_info", "PHASES", "phase_of"]

#: a job's phase -> how the report names it, in the order a search goes through them
PHASES = {
    "uniform": "warm start: uniform plans",
    "guided": "warm start: sensitivity-guided",
    "one-shot": "warm start: one-shot allocator",
    "warm start": "warm start",  # a run from before phases were recorded
    "user": "your plans",
    "sampler": "sampler",
}


class HistoryEvent(NamedTuple):
    order: int  # jobs finished so far, this one included (1-based)
    trial: int | None  # its trial in the main study (None: a screening-only job)
    epochs: float  # fine-tune epochs spent by every job finished so far
    hypervolume: float  # of the feasible fully trained trials finished so far
    hypervolume_log: float  # the same with size and FLOPs in decades (it saturates later)
    phase: str  # a key of PHASES
    rung: int | None  # the fidelity rung it reached (None: not a multi-fidelity run)
    state: str  # complete, pruned (stopped early / not promoted further), over_budget, failed
    accuracy: float | None  # its validation accuracy at that point


class HistoryInfo(NamedTuple):
    events: list[HistoryEvent]
    #: the fidelity ladder (fine-tune epochs at each rung), None without multi-fidelity
    rungs: list[float] | None

    @property
    def phases(self) -> list[str]:
        """The phases that occur, in the order of :data:`PHASES`."""
        seen = {e.phase for e in self.events}
        return [p for p in PHASES if p in seen]

    @property
    def epochs(self) -> float:
        return self.events[-1].epochs if self.events else 0.0


def phase_of(t: FrozenTrial, by_number: dict[int, FrozenTrial], depth: int = 0) -> str:
    """The phase of trial ``t``: as recorded when its plan was enqueued, that of the
    trial a retry retries, ``warm start`` for an enqueued plan of an older run, else
    ``sampler``."""
    phase = t.user_attrs.get("phase")
    if isinstance(phase, str) and phase in PHASES:
        return phase
    first = t.user_attrs.get("retry_of")
    if isinstance(first, int) and first in by_number and first != t.number and depth < 50:
        return phase_of(by_number[first], by_number, depth + 1)
    return "warm start" if "fixed_params" in t.system_attrs else "sampler"


def _covered(p: FrontPoint, kept: list[FrontPoint], metrics: list[str],
             directions: list[str]) -> bool:
    """``p`` leaves the front ``kept`` as it is (a point of it dominates or equals ``p``):
    the hypervolume need not be computed again (most jobs of a long search)."""
    mine = [p.metric(m) for m in metrics]
    for q in kept:
        theirs = [q.metric(m) for m in metrics]
        if theirs == mine or dominates(theirs, mine, directions):
            return True
    return False


def _finished(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) \
        and not t.user_attrs.get("interrupted")


def _when(t: FrozenTrial) -> tuple[float, int]:
    done = t.datetime_complete or t.datetime_start or datetime.datetime.max
    try:
        return done.timestamp(), t.number
    except (OverflowError, ValueError, OSError):
        return float("inf"), t.number


def _screen_study(run: Run) -> optuna.Study | None:
    """The multi-fidelity screening study beside the run's (None when there is none)."""
    from slimtune.search.fidelity_loop import screen_name

    storage = run.study._storage  # type: ignore[attr-defined]
    name = screen_name(run.study.study_name)
    if not any(s.study_name == name for s in storage.get_all_studies()):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _state(t: FrozenTrial) -> str:
    if t.state == TrialState.FAIL:
        return "failed"
    if t.user_attrs.get("status") == "over_budget":
        return "over_budget"
    return "complete" if t.state == TrialState.COMPLETE else "pruned"


def history_info(run: str | Path | Run, front: FrontInfo | None = None) -> HistoryInfo:
    """Every finished job of ``run`` in the order it finished, with the hypervolume of the
    front after it (as :attr:`FrontInfo.hypervolume` counts it: feasible trials only, the
    run's objectives; linear axes, and costs in decades). ``front``: the run's
    :func:`front_info` when already read."""
    run = as_run(run)
    front = front or front_info(run)
    main = run.study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in main}
    screen = _screen_study(run)
    screen_trials = screen.get_trials(deepcopy=False) if screen is not None else []
    screen_by_number = {t.number: t for t in screen_trials}
    fidelity = screen is not None or any("rung" in t.user_attrs for t in main)

    jobs: list[tuple[tuple[float, int], int, FrozenTrial, bool]] = []
    for t in main:
        if _finished(t):
            jobs.append((_when(t), 1, t, True))
    for t in screen_trials:
        if _finished(t):
            jobs.append((_when(t), 0, t, False))
    jobs.sort(key=lambda j: (j[0], j[1]))

    objectives = front.objectives
    metrics = [o.metric for o in objectives_of(objectives)]
    directions = [o.direction for o in objectives_of(objectives)]
    kept: list[FrontPoint] = []
    hv = hv_log = spent = 0.0
    events = []
    for order, (_, _, t, in_main) in enumerate(jobs, start=1):
        a = t.user_attrs
        spent += number(a.get("epochs_trained")) or 0.0
        if in_main and t.state == TrialState.COMPLETE and feasible(t):
            p = point_of(t, metrics)
            if p is not None and not _covered(p, kept, metrics, directions):
                kept = nondominated([*kept, p], lambda q: [q.metric(m) for m in metrics],
                                    directions)
                hv = hypervolume(kept, front.teacher, objectives)
                hv_log = hypervolume(kept, front.teacher, objectives, log=True)
        if in_main and isinstance(a.get("plan_id"), int):
            origin = screen_by_number.get(a["plan_id"])
            phase = phase_of(origin, screen_by_number) if origin else phase_of(t, by_number)
        else:
            phase = phase_of(t, screen_by_number if not in_main else by_number)
        rung = a.get("rung") if isinstance(a.get("rung"), int) else (0 if fidelity else None)
        events.append(HistoryEvent(order, t.number if in_main else None, spent, hv, hv_log,
                                   phase, rung, _state(t), number(a.get("val_accuracy"))))
    rungs = run.meta.get("config", {}).get("rungs") if fidelity else None
    ladder = [float(r) for r in rungs] if isinstance(rungs, list) and all(
        number(r) is not None for r in rungs) else None
    return HistoryInfo(events, ladder)

