"""The multi-fidelity loop: the scheduler (search/fidelity.py) says what to run next, Ray
runs it (search/rung.py), the studies record it.

Two studies share the run's storage (docs/DESIGN-NOTES.md, "Multi-fidelity search"):

- the **screening study** (``<study>-screen``) proposes every new plan through its
  sampler and holds each plan's first rung (rung 0: BatchNorm re-estimated, no gradient
  step) as a COMPLETE trial valued (rung-0 accuracy, size, FLOPs): the sampler learns
  from every plan screened, which are many and cheap. A plan's id is its trial number
  there.
- the **main study** holds only fine-tuned results, one trial per job at rung 1 or
  above, added when the job has finished (the plan's parameters; user attributes
  ``plan_id``, ``rung``, ``epochs``, ``accuracy_by_rung``): top-rung jobs COMPLETE with
  their values, lower ones PRUNED. ``best_trials``, ``slimtune front`` and the
  hypervolume see only fully fine-tuned plans; no rung-0 result can reach the front.

Budget: the fine-tune epochs of every finished job (``--budget-epochs``). A job starts
only if the epochs spent, those in flight and the rest of the plan's way to the top fit
in it; when nothing fits and nothing runs, the search ends. ``--trials`` bounds the plans
fully fine-tuned. Resume rebuilds the scheduler from both studies; a job that was running
runs again.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from slimtune.errors import SearchAborted
from slimtune.objectives.table import objectives_of
from slimtune.search.artifact_store import ARTIFACT_ATTR
from slimtune.search.checks import as_user_error
from slimtune.search.config import SearchConfig
from slimtune.search.events import _METRICS, SearchEvents, TrialRecord
from slimtune.search.fidelity import MOASHA, Job, Result
from slimtune.search.loop import _abandon, _feasible, _nondominated, _why_stopped
from slimtune.search.node_loss import NodeLoss
from slimtune.search.optuna_internals import (
    _frozen,
    _is_enqueued,
    _is_genetic,
    _join_generation,
    _one_commit_for_params,
    _set_user_attrs,
)
from slimtune.search.pareto import FrontPoint, hypervolume
from slimtune.search.rung import RungSpec, state_path
from slimtune.search.signals import Signals
from slimtune.search.study import Run
from slimtune.search.trial import TrialSpec, budget_size
from slimtune.spaces.space import SearchSpace
from slimtune.trust import Trust

__all__ = ["screen_name", "records_of", "epochs_spent"]

#: at most this many plans screened per plan the budget could fine-tune fully, times
#: eta^(rungs - 1): a guard against screening forever when no plan can be promoted
_SCREEN_GUARD = 2


def screen_name(study_name: str) -> str:
    """The screening study's name beside the main study ``study_name``."""
    return f"{study_name}-screen"


def _cost_metrics(config: SearchConfig) -> list[str]:
    return [o.metric for o in objectives_of(config.objectives) if o.name != "accuracy"]


def _directions(config: SearchConfig) -> tuple[str, ...]:
    return tuple(o.direction for o in objectives_of(config.objectives) if o.name != "accuracy")


def records_of(main: optuna.Study, screen: optuna.Study, config: SearchConfig
               ) -> list[Result]:
    """Every stored rung result, for :meth:`MOASHA.from_records`: the screening study's
    feasible rung-0 trials and the main study's rung trials."""
    metrics = _cost_metrics(config)
    out = []
    for t in screen.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        a = t.user_attrs
        if a.get("status") == "complete":
            out.append(Result(t.number, 0, tuple(float(a[m]) for m in metrics),
                              float(a["val_accuracy"])))
    for t in main.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED]):
        a = t.user_attrs
        if "rung" in a and "plan_id" in a:
            out.append(Result(int(a["plan_id"]), int(a["rung"]),
                              tuple(float(a[m]) for m in metrics), float(a["val_accuracy"])))
    return out


def epochs_spent(main: optuna.Study, screen: optuna.Study) -> float:
    """Fine-tune epochs of every finished job of a multi-fidelity search."""
    return sum(float(t.user_attrs.get("epochs_trained", 0.0))
               for study in (main, screen) for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


@dataclass
class _Running:
    job: Job
    cost: float  # its fine-tune epochs
    plan: dict[str, Any]
    spec: RungSpec  # what the job was given (run again if its node is lost)
    screen_trial: optuna.trial.Trial | None = None  # rung 0: the screening trial told after


def _fidelity_loop(
    config: SearchConfig, run: Run, screen: optuna.Study, space: SearchSpace,
    teacher_ref: Any, concurrency: int, ev: SearchEvents,
    job_fn: Callable[[RungSpec, dict[str, torch.Tensor]], dict[str, Any]],
    trust: Trust, signals: Signals,
) -> dict[str, Any]:
    """Run the multi-fidelity search until its epoch budget is spent; its counts."""
    import ray

    study = run.study
    task = ray.remote(job_fn).options(num_cpus=config.cpus_per_trial,
                                      num_gpus=config.gpus_per_trial, max_retries=0)
    rungs, top = config.rungs, len(config.rungs) - 1
    budget = float(config.budget_epochs)
    sched = MOASHA.from_records(
        rungs, records_of(study, screen, config), config.eta, _directions(config),
        config.promotion, [float(run.teacher[m]) for m in _cost_metrics(config)])
    spent_before = epochs_spent(study, screen)
    full = len(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]))
    screened = len(screen.get_trials(deepcopy=False))
    guard = _SCREEN_GUARD * config.eta ** top * max(1, math.ceil(budget / rungs[top]))
    points = _nondominated([FrontPoint.of(t) for t in study.get_trials(
        states=[TrialState.COMPLETE]) if _feasible(t)], config)
    counts: dict[str, Any] = {
        "done": 0, "failed": 0, "pruned": 0, "over_budget": 0, "running": 0,
        "total": budget, "budget": config.trials, "before": full, "retried": 0,
        "hypervolume": hypervolume(points, run.teacher, config.objectives), "front": len(points),
        "epochs_saved": 0, "epochs_trained": 0.0, "budget_epochs": budget,
        "epochs_spent": spent_before, "screened": 0, "fully_trained": full, **sched.counts(),
    }
    pending: dict[Any, _Running] = {}
    lost = NodeLoss(config.cpus_per_trial, config.gpus_per_trial)
    #: plan id -> its screening trial (its plan, parameters and their distributions)
    plans = {t.number: t for t in screen.get_trials(deepcopy=False)}
    genetic = _is_genetic(screen.sampler)
    queued = len(screen.get_trials(deepcopy=False, states=[TrialState.WAITING]))
    warm_running: set[int] = set()

    def in_flight() -> float:
        return sum(r.cost for r in pending.values())

    def top_jobs() -> int:
        return full + sum(r.job.rung == top for r in pending.values())

    def fits(rung: int) -> bool:
        """A plan at ``rung`` (-1: a new one) may take its next step: the rest of its way
        to the top fits in the budget, and the top still has room under --trials."""
        rest = rungs[top] - (rungs[rung] if rung >= 0 else 0.0)
        return (counts["epochs_spent"] + in_flight() + rest <= budget + 1e-9
                and top_jobs() < config.trials)

    def submit(job: Job, plan: dict[str, Any], trial: optuna.trial.Trial | None) -> None:
        start = rungs[job.start] if job.start >= 0 else 0.0
        stop = rungs[job.rung]
        keep = job.rung < top and (job.rung > 0 or rungs[0] > 0)  # rung 0 is rebuilt cheaply
        spec = RungSpec(
            trial=_trial_spec(config, plan, job, trust), rung=job.rung, start=start,
            stop=stop, top=job.rung == top, recalibrate=rungs[0] == 0,
            state_in=(state_path(run.dir, job.plan, job.start).read_bytes()
                      if job.start >= 0 and (job.start > 0 or rungs[0] > 0) else None),
            state_out=keep,
            costs=_costs_of(plans[job.plan].user_attrs, config) if job.start >= 0 else None)
        pending[task.remote(spec, teacher_ref)] = _Running(job, stop - start, plan, spec,
                                                           trial)

    if ev.ladder_started:
        ev.ladder_started(budget, rungs, concurrency)
    try:
        while True:
            while len(pending) < concurrency:
                job = sched.next_job(fits)
                if job is not None:
                    submit(job, dict(plans[job.plan].user_attrs["plan"]), None)
                    continue
                if not fits(-1) or screened >= guard:
                    break
                if genetic and not queued and warm_running:
                    break  # the warm start is the first generation: let it finish first
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = screen.ask()
                if _is_enqueued(trial):
                    queued = max(0, queued - 1)
                    warm_running.add(trial.number)
                    _join_generation(screen, trial)
                with _one_commit_for_params(screen):
                    plan = space.sample(trial).to_dict()
                screened += 1
                counts["screened"] += 1
                submit(sched.add(trial.number), plan, trial)
            counts["running"] = len(pending)
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                r = pending[ref]
                result = ray_get(ref)
                if isinstance(result, BaseException) and lost.retry(
                        (r.job.plan, r.job.rung), result):
                    pending[task.remote(r.spec, teacher_ref)] = r
                    del pending[ref]
                    concurrency = min(concurrency, lost.room)  # >= 1, or it raised
                    counts.update(retried_lost=lost.retried, nodes_lost=lost.nodes_lost)
                    if ev.note:
                        ev.note(lost.describe((r.job.plan, r.job.rung),
                                              f"the job of plan {r.job.plan} at rung {r.job.rung}"))
                    continue
                warm_running.discard(r.job.plan)
                if isinstance(result, dict):
                    result.update(lost.attrs((r.job.plan, r.job.rung)))
                    if result.get("state") is not None:  # kept by the driver, not the node
                        _keep_state(run, r.job.plan, r.job.rung, result.pop("state"))
                else:  # the trial's own error inside Ray's wrapper
                    result = getattr(result, "cause", None) or result
                record, point = _finish_job(run, screen, plans, sched, r, result,
                                            config, counts)
                del pending[ref]
                if r.job.rung == top and record.state == TrialState.COMPLETE:
                    full += 1
                    if point is not None:
                        points[:] = _nondominated([*points, point], config)
                        counts["hypervolume"] = hypervolume(points, run.teacher,
                                                            config.objectives)
                counts.update(running=len(pending), front=len(points), fully_trained=full,
                              **sched.counts())
                if ev.trial_done:
                    ev.trial_done(record, counts)
                if config.max_failures and counts["failed"] >= config.max_failures:
                    _stop(screen, pending, "the search stopped: too many failed jobs")
                    raise SearchAborted(f"{counts['failed']} jobs failed (--max-failures "
                                        f"{config.max_failures}); the last: "
                                        f"{record.user_attrs.get('error', '?')}")
    except BaseException as exc:  # Ctrl-C, SIGTERM, a full disk: no trial is left RUNNING
        try:
            _stop(screen, pending, f"{_why_stopped(exc, signals)}; retried on resume")
        except Exception:  # noqa: BLE001 - the storage itself failed: resume repairs it
            pass
        err = as_user_error(exc)
        if err is exc:
            raise
        raise err from None
    finally:
        study.set_user_attr("hypervolume", counts["hypervolume"])
    counts["epochs_trained"] = counts["epochs_spent"] - spent_before
    return counts


def ray_get(ref: Any) -> dict[str, Any] | BaseException:
    """A job's result, or the exception it raised (recorded, the search goes on)."""
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - any job failure is recorded
        return exc


def _stop(screen: optuna.Study, pending: dict[Any, _Running], reason: str) -> None:
    """Cancel every running job; rung-0 trials are failed (warm-start plans requeued),
    promotions simply run again on resume (nothing of them was stored)."""
    import ray

    screening = {}
    for ref, r in pending.items():
        if r.screen_trial is not None:
            screening[ref] = r.screen_trial
        else:
            ray.cancel(ref, force=True)
    pending.clear()
    _abandon(screen, screening, reason, reorder=True)


def _costs_of(attrs: dict[str, Any], config: SearchConfig) -> dict[str, float]:
    """A plan's costs as its first rung measured them (they cannot change up the ladder)."""
    keys = ("size_bytes", "fixed_size_bytes", "flops", "dense_flops", "bitops",
            *_cost_metrics(config))
    return {k: attrs[k] for k in dict.fromkeys(keys) if k in attrs}


def _trial_spec(config: SearchConfig, plan: dict[str, Any], job: Job, trust: Trust
                ) -> TrialSpec:
    return TrialSpec(
        model=config.model, data=config.data, plan=plan, epochs=config.epochs, lr=config.lr,
        batch_size=config.batch_size, seed=config.seed * 100003 + job.plan,
        threads=max(1, math.floor(config.cpus_per_trial)), gpu_fraction=config.gpus_per_trial,
        objectives=config.objectives,
        data_dir=str(config.data_dir) if config.data_dir else None, subset=config.subset,
        val_subset=config.val_subset,
        max_size=config.max_size if job.rung == 0 else None,
        max_flops=config.max_flops if job.rung == 0 else None,
        early_stop=False, trust=tuple(trust.to_list()), latency=config.latency)


def _attrs(out: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"plan": plan, "status": out["status"],
                             "epochs_trained": float(out["epochs_trained"]),
                             "seconds": round(float(out["seconds"]), 3)}
    for key in (*_METRICS, "rung", "epochs", "ran", "threads", "device", "seed", "retries"):
        if key in out:
            attrs["val_accuracy" if key == "accuracy" else key] = out[key]
    return attrs


def _constraints(config: SearchConfig, out: dict[str, Any], final: bool) -> dict[str, float]:
    """What ``trial.constraints`` holds (<= 0: met); accuracy only for a fully trained plan.
    The size's is on the fixed-width size, the number the budget check used."""
    limits, c = config.constraints, {}
    if "size" in limits:
        c["size"] = budget_size(out) / limits["size"] - 1.0
    if "flops" in limits:
        c["flops"] = out["flops"] / limits["flops"] - 1.0
    if "accuracy" in limits and final:
        c["accuracy"] = limits["accuracy"] - float(out["accuracy"])
    return c


def _finish_job(run: Run, screen: optuna.Study,
                plans: dict[int, optuna.trial.FrozenTrial], sched: MOASHA, r: _Running,
                out: dict[str, Any] | BaseException, config: SearchConfig,
                counts: dict[str, Any]) -> tuple[TrialRecord, FrontPoint | None]:
    """Record one finished job: in the screening study (rung 0) or as a new trial of the
    main study (rung >= 1); tell the scheduler. The record for the progress display and,
    for a feasible top-rung result, its front candidate."""
    job, study = r.job, run.study
    top = len(config.rungs) - 1
    metrics = config.metrics
    if not isinstance(out, BaseException):
        try:
            values = [float(out[m]) for m in metrics]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"non-finite objective values {values}")
        except (KeyError, ValueError) as exc:
            out = exc
    if isinstance(out, BaseException):
        sched.forget(job.plan, job.rung)
        counts["failed"] += 1
        attrs = {"plan": r.plan, "plan_id": job.plan, "rung": job.rung,
                 "error": f"{type(out).__name__}: {out}"[:2000]}
        if r.screen_trial is not None:
            _set_user_attrs(screen, r.screen_trial, attrs)
            screen.tell(r.screen_trial, state=TrialState.FAIL)
            return TrialRecord(r.screen_trial.number, TrialState.FAIL, attrs, None), None
        number = _add(study, plans[job.plan], TrialState.FAIL, None, attrs, {})
        return TrialRecord(number, TrialState.FAIL, attrs, None), None

    attrs = _attrs(out, r.plan)
    attrs.update(plan_id=job.plan, rung=job.rung)
    counts["epochs_spent"] += attrs["epochs_trained"]
    constraints = _constraints(config, out, job.rung == top)
    feasible = all(v <= 0 for v in constraints.values())
    costs = [float(out[m]) for m in _cost_metrics(config)]
    if out["status"] == "complete":
        sched.report(job.plan, job.rung, costs, float(out["accuracy"]))
    else:
        sched.forget(job.plan, job.rung)
        counts["over_budget"] += 1
    if r.screen_trial is not None:  # rung 0 (or MO-ASHA's first rung): the screening study
        for name, value in constraints.items():
            r.screen_trial.set_constraint(name, value)
        _set_user_attrs(screen, r.screen_trial, attrs)
        screen.tell(r.screen_trial, values)
        plans[job.plan] = _frozen(r.screen_trial)
        if job.rung < top:
            return TrialRecord(r.screen_trial.number, TrialState.COMPLETE, attrs, values,
                               constraints), None
    attrs["accuracy_by_rung"] = {str(k): res[job.plan].accuracy
                                 for k, res in enumerate(sched.results) if job.plan in res}
    final = job.rung == top
    state = TrialState.COMPLETE if final else TrialState.PRUNED
    system: dict[str, str] = {}
    if final and out.get("artifact"):  # into the store first, then the trial that names it
        attrs[ARTIFACT_ATTR], system = run.store.put(
            out["artifact"], f"plan-{job.plan:05d}.slim")
    number = _add(study, plans[job.plan], state, values if final else None, attrs,
                  constraints, system)
    if final:
        counts["done"] += 1
        _drop_states(run, job.plan, top)
    else:
        counts["pruned"] += 1
    point = FrontPoint.of_results(number, out) if final and feasible else None
    return TrialRecord(number, state, attrs, values if final else None, constraints), point


def _add(study: optuna.Study, first: optuna.trial.FrozenTrial, state: TrialState,
         values: list[float] | None, attrs: dict[str, Any], constraints: dict[str, float],
         system: dict[str, str] | None = None) -> int:
    """A finished job as a new trial of the main study (the plan's parameters and their
    distributions from its screening trial ``first``; ``system``: its artifact's record);
    its number."""
    now = time.time()
    ran = attrs.get("ran") or [now, now]
    trial = optuna.trial.create_trial(
        state=state, values=values, params=first.params, distributions=first.distributions,
        user_attrs=attrs, system_attrs=system or None, constraints=constraints or None)
    trial.datetime_start = _dt(ran[0])
    trial.datetime_complete = _dt(ran[1])
    number = len(study.get_trials(deepcopy=False))  # one driver: the next number
    study.add_trial(trial)
    return number


def _dt(t: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(t)


def _keep_state(run: Run, plan_id: int, rung: int, state: bytes) -> None:
    """A plan's weights at ``rung`` (returned by its job), for the job that continues it."""
    from slimtune.files import atomic_path, write_into

    path = state_path(run.dir, plan_id, rung)
    with atomic_path(path, "a rung's weights") as tmp:
        write_into(tmp, state, "a rung's weights", path)


def _drop_states(run: Run, plan_id: int, top: int) -> None:
    """A plan fully trained needs none of its saved rung weights any more."""
    for rung in range(top):
        state_path(run.dir, plan_id, rung).unlink(missing_ok=True)
