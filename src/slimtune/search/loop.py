"""The ask/tell loop: the driver asks the sampler for a plan, submits the trial as a Ray
task with the CPUs/GPUs it asked for, and tells the study the measured objectives when the
task returns (:func:`_finish`); on Ctrl-C, SIGTERM or too many failures no trial is left
RUNNING (:func:`_abandon`).

It is the engine's hot path (bench/overhead.py measures its cost per trial, mostly
storage commits): keep the work per trial as it is.
"""

from __future__ import annotations

import math
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from slimtune.errors import SearchAborted
from slimtune.objectives.dominance import nondominated
from slimtune.search.artifact_store import ARTIFACT_ATTR
from slimtune.search.checks import as_user_error
from slimtune.search.config import SearchConfig
from slimtune.search.drivers import study_lock
from slimtune.search.events import _METRICS, SearchEvents, TrialRecord
from slimtune.search.node_loss import NodeLoss
from slimtune.search.optuna_internals import (
    _count_trials,
    _frozen,
    _is_enqueued,
    _is_genetic,
    _join_generation,
    _one_commit_for_params,
    _record_heartbeats,
    _requeue_first,
    _retry_attrs,
    _seed_of,
    _set_user_attrs,
)
from slimtune.search.pareto import FrontPoint, hypervolume
from slimtune.search.signals import Signals
from slimtune.search.study import HEARTBEAT_INTERVAL, Run
from slimtune.search.trial import TrialSpec, budget_size, early_stop_axes
from slimtune.spaces.space import SearchSpace
from slimtune.trust import Trust


def _loop(
    config: SearchConfig, run: Run, space: SearchSpace, teacher_ref: Any,
    concurrency: int, ev: SearchEvents,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]],
    shared: bool, retried: list[int], trust: Trust, signals: Signals, driver: int = 0,
) -> dict[str, Any]:
    """Run the trials left of ``config.trials`` (``concurrency`` at a time) and return
    the search's counts (done, failed, pruned, over budget, hypervolume, epochs saved...)."""
    import ray

    study = run.study
    task = ray.remote(trial_fn).options(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0
    )
    threads = max(1, math.floor(config.cpus_per_trial))
    counted = _counted(study)
    limit = config.trials  # with --budget-epochs (fidelity off): as many as it pays for
    if config.budget_epochs is not None and config.epochs:
        limit = min(limit, int(config.budget_epochs // config.epochs))
    todo = max(0, limit - counted)
    counts: dict[str, Any] = {
        "done": 0, "failed": 0, "pruned": 0, "over_budget": 0, "running": 0,
        "total": todo, "budget": limit, "before": counted, "retried": len(retried),
        "hypervolume": 0.0, "front": 0, "epochs_saved": 0, "epochs_trained": 0,
    }
    teacher_metrics = run.teacher
    points = _nondominated([FrontPoint.of(t) for t in study.get_trials(
        states=[TrialState.COMPLETE]) if _feasible(t)], config)
    # ``points`` is kept as the front of the feasible trials so far (same hypervolume as all
    # of them, and the early-stopping rule needs only it)
    counts["hypervolume"] = hypervolume(points, teacher_metrics, config.objectives)  # so far
    axes = early_stop_axes(config.objectives)
    pending: dict[Any, optuna.trial.Trial] = {}
    asking: optuna.trial.Trial | None = None
    specs: dict[int, TrialSpec] = {}  # each running trial's (its plan; run again if lost)
    lost = NodeLoss(config.cpus_per_trial, config.gpus_per_trial)
    started = 0
    beat = time.monotonic()
    # breeding waits for the warm start: with a genetic sampler, a plan sampled while warm-
    # start trials still run would join the first generation as a random plan
    genetic = _is_genetic(study.sampler)
    queued = len(study.get_trials(deepcopy=False, states=[TrialState.WAITING]))
    enqueued_running: set[int] = set()
    if ev.started:
        ev.started(todo, concurrency)
    try:
        while started < todo or pending:
            while started < todo and len(pending) < concurrency:
                if genetic and not queued and enqueued_running:
                    break  # the warm start is still running: wait for it
                with study_lock(study):  # drivers of a shared study: count and ask at once
                    if shared and _counted(study) >= limit:
                        todo = started  # other drivers of the shared study used the budget
                        break
                    with warnings.catch_warnings():  # heartbeats are ours, not optimize()'s
                        warnings.filterwarnings("ignore", message="Heartbeat of storage")
                        trial = study.ask()
                asking = trial  # a SIGINT from here to the submission must not leak it
                enqueued = _is_enqueued(trial)
                if enqueued:
                    queued = max(0, queued - 1)
                    enqueued_running.add(trial.number)
                    _join_generation(study, trial)
                if shared:
                    _record_heartbeats(study, [trial])
                with _one_commit_for_params(study):
                    plan = space.sample(trial)
                front = tuple((p.trial, {a: p.metric(a) for a in axes}) for p in points)
                spec = TrialSpec(
                    model=config.model, data=config.data, plan=plan.to_dict(),
                    epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    seed=config.seed * 100003 + _seed_of(trial), threads=threads,
                    gpu_fraction=config.gpus_per_trial,
                    objectives=config.objectives,
                    data_dir=str(config.data_dir) if config.data_dir else None,
                    subset=config.subset, val_subset=config.val_subset,
                    max_size=config.max_size,
                    max_flops=config.max_flops, front=front, trust=tuple(trust.to_list()),
                    latency=config.latency,
                    # warm-start plans always train to the end: they are the reference the
                    # search must beat, and a genetic sampler's first generation
                    early_stop=config.early_stop and not enqueued,
                )
                specs[trial.number] = spec
                pending[task.remote(spec, teacher_ref)] = trial
                asking = None
                started += 1
            counts["running"] = len(pending)
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1,
                                timeout=HEARTBEAT_INTERVAL if shared else None)
            if shared and time.monotonic() - beat >= HEARTBEAT_INTERVAL / 2:
                _record_heartbeats(study, pending.values())
                beat = time.monotonic()
            for ref in ready:
                trial = pending[ref]  # stays pending (abandoned on SIGINT) until told
                result = _result(ref)
                if isinstance(result, BaseException) and lost.retry(trial.number, result):
                    pending[task.remote(specs[trial.number], teacher_ref)] = trial
                    del pending[ref]
                    concurrency = min(concurrency, lost.room)  # >= 1, or it raised
                    counts.update(retried_lost=lost.retried, nodes_lost=lost.nodes_lost)
                    if ev.note:
                        ev.note(lost.describe(trial.number))
                    continue
                enqueued_running.discard(trial.number)
                point, record = _finish(run, trial, result, counts, config, points,
                                        teacher_metrics, specs.pop(trial.number).plan,
                                        driver if shared else None,
                                        lost.attrs(trial.number))
                del pending[ref]
                if point is not None:
                    points[:] = _nondominated([*points, point], config)  # O(front), not O(trials)
                counts["running"] = len(pending)
                counts["front"] = len(points)
                if ev.trial_done:
                    ev.trial_done(record, counts)
                if config.max_failures and counts["failed"] >= config.max_failures:
                    last = record.user_attrs.get("error", "?")
                    _abandon(study, pending, "the search stopped: too many failed trials",
                             reorder=not shared)
                    raise SearchAborted(
                        f"{counts['failed']} trials failed (--max-failures "
                        f"{config.max_failures}); the last: {last}"
                    )
    except BaseException as exc:  # Ctrl-C, SIGTERM, a full disk: no trial is left RUNNING
        if asking is not None:
            pending[None] = asking
        try:
            _abandon(study, pending, f"{_why_stopped(exc, signals)}; retried on resume",
                     reorder=not shared)
        except Exception:  # noqa: BLE001 - the storage itself failed: resume repairs it
            pass
        err = as_user_error(exc)
        if err is exc:
            raise
        raise err from None
    finally:  # once, not per trial: every storage write costs a commit
        with study_lock(study):  # shared: of every driver's trials; the last one writes
            if shared:
                points = _nondominated([FrontPoint.of(t) for t in study.get_trials(
                    deepcopy=False, states=[TrialState.COMPLETE]) if _feasible(t)], config)
                counts["hypervolume"] = hypervolume(points, teacher_metrics,
                                                    config.objectives)
            study.set_user_attr("hypervolume", counts["hypervolume"])
    return counts



def _why_stopped(exc: BaseException, signals: Signals) -> str:
    """What ended a search early, as the trials it left are told."""
    if signals.terminated:
        return "the search was terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user (SIGINT)"
    return f"the search stopped: {type(exc).__name__}: {exc}"[:500]


def _counted(study: optuna.Study) -> int:
    """Trials that count toward the budget: finished ones (complete, pruned, failed by
    their own error) and ones running now; not those interrupted and retried. Counted by
    the storage, reading only the failed trials (few): a shared study asks this before
    every trial."""
    n = _count_trials(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return n + sum(1 for t in study.get_trials(deepcopy=False, states=[TrialState.FAIL])
                   if not t.user_attrs.get("interrupted"))



def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())



def _nondominated(points: list[FrontPoint], config: SearchConfig) -> list[FrontPoint]:
    """The points no other point beats on the search's objectives."""
    metrics = config.metrics
    return nondominated(points, lambda p: [p.metric(m) for m in metrics], config.directions,
                        unique=False)




def _record(trial: optuna.trial.Trial, state: TrialState,
            values: list[float] | None = None) -> TrialRecord:
    """The record of a trial just told, from what the driver wrote (no storage read)."""
    frozen = _frozen(trial)
    return TrialRecord(trial.number, state, dict(frozen.user_attrs), values,
                       dict(frozen.constraints))


def _abandon(study: optuna.Study, pending: dict[Any, optuna.trial.Trial], reason: str,
             reorder: bool) -> None:
    """Cancel running trials and record them as failed, so no trial is left RUNNING; their
    plans are enqueued again, first in the queue (see :func:`_requeue_first`)."""
    import ray

    retried: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for ref, trial in pending.items():
        if ref is not None:
            ray.cancel(ref, force=True)
        try:
            trial.set_user_attr("error", reason)
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # told just before the interrupt: it finished
        retried.append((trial.params, _retry_attrs(
            trial.number, _frozen(trial).user_attrs)))
    pending.clear()
    with study_lock(study):  # new trials: numbered one at a time across drivers
        _requeue_first(study, retried, reorder)


def _result(ref: Any) -> Any:
    """A finished task's result, or the exception ``ray.get`` raised for it."""
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - recorded by the caller
        return exc


def _finish(
    run: Run, trial: optuna.trial.Trial, result: Any, counts: dict[str, Any],
    config: SearchConfig, points: list[FrontPoint], teacher: dict[str, Any],
    plan: dict[str, Any], driver: int | None = None, retries: dict[str, Any] | None = None,
) -> tuple[FrontPoint | None, TrialRecord]:
    """Record one finished task (``result``: what it returned, or the exception it
    raised) in the study: the new feasible front candidate (or None) and the trial's
    record for the progress display. ``retries``: its attempts lost with their node."""
    metrics = config.metrics
    retries = retries or {}
    try:
        if isinstance(result, BaseException):
            raise result
        out = result
        values = [float(out.get(m, 0.0) if out.get("status") == "pruned" else out[m])
                  for m in metrics]  # a pruned trial's values are never told
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded, the search goes on
        cause = getattr(exc, "cause", None) or exc
        _set_user_attrs(run.study, trial, {"plan": plan, **retries,
                                           "error": f"{type(cause).__name__}: {cause}"[:2000]})
        run.study.tell(trial, state=TrialState.FAIL)
        counts["failed"] += 1
        return None, _record(trial, TrialState.FAIL)
    status = out.get("status", "complete")
    trained = int(out.get("epochs_trained", config.epochs))
    counts["epochs_trained"] += trained
    attrs: dict[str, Any] = {"plan": plan, "status": status, "epochs_trained": trained,
                             "seconds": round(float(out["seconds"]), 3), **retries}
    if config.storage is not None:
        attrs["host"] = socket.gethostname()  # the driver that recorded it
    if driver is not None:
        attrs["driver"] = driver  # its index in the study's ``drivers``
    for key in (*_METRICS, "curve", "dominated_by", "dominator_accuracy", "ran", "threads",
                "device", "seed"):
        if key in out:
            attrs["val_accuracy" if key == "accuracy" else key] = out[key]
    if status == "pruned":
        _set_user_attrs(run.study, trial, attrs)
        run.study.tell(trial, state=TrialState.PRUNED)
        counts["pruned"] += 1
        counts["epochs_saved"] += config.epochs - trained
        return None, _record(trial, TrialState.PRUNED)
    feasible = True
    limits = config.constraints
    if limits:
        measured = {"size": budget_size(out) / limits.get("size", 1) - 1.0,
                    "flops": out["flops"] / limits.get("flops", 1) - 1.0,
                    "accuracy": limits.get("accuracy", 0.0) - float(out["accuracy"])}
        for name in limits:  # the sampler reads these: it steers away from violations
            trial.set_constraint(name, measured[name])
            feasible = feasible and measured[name] <= 0
    system: dict[str, str] = {}
    if status == "over_budget":
        counts["over_budget"] += 1
        counts["epochs_saved"] += config.epochs
    elif out.get("artifact"):  # into the store first: the trial never names an object
        # not fully written; a store that fails (a full disk) stops the search, resumable
        attrs[ARTIFACT_ATTR], system = run.store.put(out["artifact"],
                                                     f"trial-{trial.number:05d}.slim")
    point = FrontPoint.of_results(trial.number, out)
    if feasible:
        counts["hypervolume"] = hypervolume([*points, point], teacher, config.objectives)
    attrs["hypervolume"] = counts["hypervolume"]  # of the feasible trials so far
    _set_user_attrs(run.study, trial, attrs, system)
    run.study.tell(trial, values)
    counts["done"] += 1
    return (point if feasible else None), _record(trial, TrialState.COMPLETE, values)
