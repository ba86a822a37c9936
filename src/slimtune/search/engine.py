"""The search: an Optuna ask/tell loop in the driver, trials run as Ray tasks.

The driver asks the sampler for a plan, submits the trial to Ray with the CPUs/GPUs it
asked for, and tells the study the three measured objectives when the task returns. It is
the only writer of the study, so SQLite in the run directory is safe.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from slimtune import __version__
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, RunDirError, SearchAborted
from slimtune.export.artifact import save
from slimtune.models.teacher import TeacherConfig, load_or_train_teacher
from slimtune.search.checks import as_user_error, check_model_runs, check_run_dir
from slimtune.search.config import RESUME_OVERRIDES, SearchConfig
from slimtune.search.guided import (
    ProbeSpec,
    Sensitivity,
    guided_plans,
    measure_sensitivity,
    probe_task,
)
from slimtune.search.pareto import FrontPoint, hypervolume, pareto_front
from slimtune.search.ray_runner import RayCluster
from slimtune.search.signals import Signals, Terminated, sigterm_as_interrupt
from slimtune.search.study import (
    HEARTBEAT_INTERVAL,
    Run,
    create_study,
    make_sampler,
    open_run,
    open_storage,
)
from slimtune.search.trial import TrialSpec, measure, run_trial
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace
from slimtune.trust import Trust, check

__all__ = ["search", "resume", "SearchResult", "SearchEvents", "TrialRecord",
           "warm_start_plans", "Terminated"]


@dataclass
class SearchEvents:
    """Callbacks for progress display; every one is optional."""

    teacher_epoch: Callable[[int, int, float], None] | None = None
    teacher_step: Callable[[int, int], None] | None = None
    teacher_ready: Callable[[dict[str, Any], str], None] | None = None  # (metrics, source)
    sensitivity: Callable[[int, int], None] | None = None  # (layers, tasks): pass begins
    guided: Callable[[float, int], None] | None = None  # (seconds, plans): pass done
    warning: Callable[[str], None] | None = None  # something went wrong, the search goes on
    started: Callable[[int, int], None] | None = None  # (trials to run, concurrency)
    trial_done: Callable[[TrialRecord, dict[str, Any]], None] | None = None


@dataclass
class SearchResult:
    run: Run
    front: list[FrontPoint]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def warm_start_plans(space: SearchSpace) -> list[CompressionPlan]:
    """Uniform plans, light to heavy, enqueued first so the front spans the range early."""
    return space.uniform_plans()


_METRICS = ("accuracy", "size_bytes", "flops", "dense_flops", "bitops", "latency_ms")


def _teacher_metrics(
    teacher: torch.nn.Module, model: str, data: Any, latency: bool, trust: Trust
) -> dict[str, Any]:
    """The teacher measured exactly as students are: through its own artifact."""
    plan = CompressionPlan()
    m = measure(teacher, model, data.num_classes, data.input_shape, plan, data.x_val,
                data.y_val, latency_device="cpu" if latency else None,
                test=(data.x_test, data.y_test), trust=trust)
    return {k: m[k] for k in (*_METRICS, "test_accuracy") if k in m}


def _check_settings(run_dir: Path, config: SearchConfig, meta: dict[str, Any]) -> None:
    old = meta["config"]
    for key in ("data", "model", "pruning", "subset", "val_subset"):
        before = old.get(key, getattr(SearchConfig, key, None))
        if before != getattr(config, key):
            raise ConfigError(
                f"{run_dir} holds a search of {key} `{before}`, not `{getattr(config, key)}`; "
                f"choose another --run-dir"
            )


class _RunLock:
    """An exclusive lock on the run directory for the driver's lifetime (released by the OS
    when the process dies, SIGKILL included): with it held, every RUNNING trial of the run
    directory's own SQLite study belongs to a dead driver."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = run_dir / "search.lock"
        self._f = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.seek(0)
            who = self._f.read().strip() or "another process"
            self._f.close()
            raise RunDirError(f"a search is already running in {run_dir} ({who}); wait for it "
                              "or choose another --run-dir") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._f.flush()

    def release(self) -> None:
        self._f.close()


def _fail_stale(study: optuna.Study, all_running_dead: bool) -> list[int]:
    """Mark trials left RUNNING by a dead driver failed and enqueue their plans again,
    ahead of the plans already queued.

    With the run directory's SQLite study every RUNNING trial is stale (we hold its lock);
    in a shared study only those whose heartbeat stopped ``HEARTBEAT_GRACE`` seconds ago.
    """
    storage = study._storage
    if all_running_dead:
        stale = [t._trial_id for t in study.get_trials(deepcopy=False,
                                                       states=[TrialState.RUNNING])]
    else:
        stale = storage._get_stale_trial_ids(study._study_id)  # type: ignore[attr-defined]
    retried: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for trial_id in stale:
        t = storage.get_trial(trial_id)
        storage.set_trial_user_attr(trial_id, "error", "its search process died while it ran; "
                                    "retried on resume")
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        try:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another driver got there first
        retried.append((t.params, _retry_attrs(t.number, t.user_attrs)))
    _requeue_first(study, retried, reorder=all_running_dead)
    return [a["retry_of"] for _, a in retried]


def _seed_of(trial: optuna.trial.Trial) -> int:
    """The trial number a trial's seed comes from: its own, or for a retry the first
    attempt's."""
    first = trial._cached_frozen_trial.user_attrs.get("seed_of")
    return trial.number if first is None else int(first)


def _retry_attrs(number: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of the retry of trial ``number``: which trial it retries, and
    whose seed it keeps (the first attempt's: a retried plan trains exactly as it would
    have)."""
    first = attrs.get("seed_of")
    return {"retry_of": number, "seed_of": number if first is None else first}


def _requeue_first(study: optuna.Study, plans: list[tuple[dict[str, Any], dict[str, Any]]],
                   reorder: bool) -> None:
    """Enqueue ``plans`` ((parameters, :func:`_retry_attrs`)) to run before the
    plans already waiting: they were running, so they come first, and a budget that ends
    before the queue does still retries them.

    Optuna starts waiting trials in the order of their numbers, so the new trials take the
    queue's last places and every waiting trial's fixed parameters (and ``retry_of``) are
    rewritten to move the retries up, which Optuna allows until a trial starts. Only with
    ``reorder``, i.e. when this driver alone runs the study (its run-directory lock): in a
    shared study another driver could start a trial while it is rewritten, so there the
    retries wait at the end of the queue."""
    waiting = study.get_trials(deepcopy=False, states=[TrialState.WAITING])
    for params, attrs in plans:
        study.enqueue_trial(params, user_attrs=attrs)
    if not (reorder and plans and waiting):
        return
    storage = study._storage
    order = list(plans) + [
        (w.system_attrs["fixed_params"],
         {k: w.user_attrs.get(k) for k in ("retry_of", "seed_of")}) for w in waiting]
    slots = study.get_trials(deepcopy=False, states=[TrialState.WAITING])  # by number
    for slot, (params, attrs) in zip(slots, order, strict=True):
        storage.set_trial_system_attr(slot._trial_id, "fixed_params", params)
        for key in ("retry_of", "seed_of"):  # None clears what the slot held before
            storage.set_trial_user_attr(slot._trial_id, key, attrs.get(key))


def _counted(study: optuna.Study) -> int:
    """Trials that count toward the budget: finished ones (complete, pruned, failed by
    their own error) and ones running now; not those interrupted and retried."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            n += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
            n += 1
    return n


def resume(
    run_dir: str | Path,
    events: SearchEvents | None = None,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
    *,
    trust_module: str | list[str] | None = None,
    **overrides: Any,
) -> SearchResult:
    """Continue the search in ``run_dir`` with its stored settings up to its trial budget.

    ``overrides`` may change only how it runs: ``trials`` (a new budget), ``address``,
    ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``, ``storage``. The stored
    settings are data: a ``module:function`` model or data set in them runs only if
    ``trust_module`` trusts its module.
    """
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        def opts(names: Any) -> str:
            return ", ".join("--" + n.replace("_", "-") for n in names)

        raise ConfigError(f"a resumed search keeps its settings; it cannot change "
                          f"{opts(bad)} (only {opts(RESUME_OVERRIDES)})")
    storage = overrides.get("storage")
    study_name = overrides.pop("study_name", SearchConfig.study_name)
    run = open_run(run_dir, storage=storage, study_name=study_name) \
        if storage or (Path(run_dir) / "study.db").exists() else None
    if run is None or "slimtune" not in run.study.user_attrs:
        raise RunDirError(f"{run_dir} holds no slimtune search to resume; start one with "
                          f"`slimtune search --run-dir {run_dir}`")
    stored = dict(run.meta["config"])
    trust = Trust.of(trust_module)
    for key, what in (("model", "model"), ("data", "data set")):
        check(str(stored.get(key)), what, trust, f"the study of {run_dir}")
    stored["run_dir"] = Path(run_dir)
    for key in ("data_dir", "checkpoint"):
        if stored.get(key):
            stored[key] = Path(stored[key])
    stored["objectives"] = tuple(stored["objectives"])
    fields = set(SearchConfig.__dataclass_fields__)
    config = SearchConfig(**{k: v for k, v in {**stored, **overrides}.items() if k in fields})
    return search(config, events, trial_fn, resume=True, trust_module=trust_module)


def search(
    config: SearchConfig,
    events: SearchEvents | None = None,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
    *,
    resume: bool = False,
    initial_plans: Callable[[SearchSpace], list[CompressionPlan]] | None = None,
    trust_module: str | list[str] | None = None,
) -> SearchResult:
    """Run a search of ``config.trials`` trials; with ``resume``, continue the one in
    ``config.run_dir`` up to that many (see :func:`resume`).

    ``trial_fn`` (tests and benchmarks) replaces the trial function run in each Ray task.
    ``initial_plans(space)``: plans of your own to run first (after the warm start's).
    The model and data set ``config`` names are the caller's, so user code they name is
    trusted; with ``resume`` they come from the study and only ``trust_module`` is.
    """
    import ray

    ev = events or SearchEvents()
    t_start = time.perf_counter()
    run_dir = config.resolved_run_dir
    trust = Trust.of(trust_module)
    named_by = f"the study of {run_dir}" if resume else None  # where the names come from
    if not resume:
        trust = trust.with_names(config.model, config.data)
    check_run_dir(run_dir)
    data = load_dataset(config.data, config.data_dir, config.subset, config.val_subset,
                        trust=trust, source=named_by)
    check_model_runs(config, data, trust, named_by)
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise ConfigError(f"--checkpoint {config.checkpoint} does not exist")
    shared = config.storage is not None and not config.storage.startswith("sqlite:")
    if not resume and not shared and (run_dir / "study.db").exists():
        _refuse_existing(run_dir, open_storage(run_dir), config.study_name)
    cluster = RayCluster(config.address)
    lock: _RunLock | None = None
    try:
        with sigterm_as_interrupt() as signals:  # SIGTERM is handled as Ctrl-C
            concurrency = cluster.max_concurrent(config.cpus_per_trial, config.gpus_per_trial)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "trials").mkdir(exist_ok=True)
                lock = _RunLock(run_dir)
            except OSError as exc:
                raise RunDirError(f"cannot write --run-dir {run_dir}: {exc.strerror or exc}"
                                  ) from None
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = create_study(run_dir, make_sampler(config.sampler, config.seed),
                                 config.metrics, config.directions, config.storage,
                                 config.study_name)
            meta = study.user_attrs.get("slimtune")
            if meta is not None and not resume:
                raise RunDirError(
                    f"the study `{config.study_name}` in --storage already holds a search; "
                    f"join or continue it with `slimtune search --resume "
                    f"{shlex.quote(str(run_dir))} --storage URL`")
            if meta is not None:
                _check_settings(run_dir, config, meta)
            retried = _fail_stale(study, all_running_dead=not shared)
            n_before = len(study.get_trials(deepcopy=False))

            teacher, source = load_or_train_teacher(
                run_dir / "teacher.pt", config.model, data,
                TeacherConfig(epochs=config.resolved_teacher_epochs, seed=config.seed),
                ev.teacher_epoch, data_name=config.data, subset=config.subset,
                checkpoint=config.checkpoint, on_step=ev.teacher_step,
                device="cuda" if torch.cuda.is_available() else "cpu", trust=trust,
                source=named_by,
            )
            space = SearchSpace.from_model(teacher, data.input_shape, config.pruning)
            teacher_ref = ray.put({k: v.cpu() for k, v in teacher.state_dict().items()})
            meta = study.user_attrs.get("slimtune")
            if meta is None:
                meta = _begin_study(config, study, space, teacher, data, teacher_ref,
                                    concurrency, ev, source, initial_plans, trust)
            elif ev.teacher_ready:
                ev.teacher_ready(meta["teacher"], source)
            # the warm start is the genetic samplers' first generation; Optuna keeps no
            # sampler state, so a resumed run reseeds (the same seed would replay the draws)
            population = meta.get("population", len(space.uniform_levels())
                                  if config.warm_start else None)
            study.sampler = make_sampler(config.sampler, config.seed + 7919 * n_before,
                                         population)
            run = Run(dir=run_dir, study=study)
            counts = _loop(config, run, space, teacher_ref, concurrency, ev, trial_fn, shared,
                           retried, trust, signals)
    finally:
        if lock is not None:
            lock.release()
        cluster.shutdown()
    return SearchResult(run=run, front=pareto_front(study), counts=counts,
                        seconds=time.perf_counter() - t_start)


def _begin_study(
    config: SearchConfig, study: optuna.Study, space: SearchSpace, teacher: torch.nn.Module,
    data: Any, teacher_ref: Any, concurrency: int, ev: SearchEvents, source: str,
    initial_plans: Callable[[SearchSpace], list[CompressionPlan]] | None, trust: Trust,
) -> dict[str, Any]:
    """A new study: measure the teacher, run the sensitivity pass, store the run's metadata
    and enqueue the warm start (uniform plans, then guided ones, then ``initial_plans``).
    A sensitivity pass that fails costs only the guided plans (a warning says why)."""
    meta: dict[str, Any] = {
        "version": __version__,
        "config": config.to_dict(),
        "teacher": _teacher_metrics(teacher, config.model, data, "latency" in config.objectives,
                                    trust),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "layers": list(space.layers),
    }
    if ev.teacher_ready:
        ev.teacher_ready(meta["teacher"], source)
    first = warm_start_plans(space) if config.warm_start else []
    if config.warm_start and config.guided:
        t0 = time.perf_counter()
        try:
            sens = _sensitivity(config, space, teacher, data, meta["teacher"], teacher_ref,
                                concurrency, ev, trust)
            guided = guided_plans(sens, space)
        except Exception as exc:  # noqa: BLE001 - like a failed trial, it ends nothing
            cause = getattr(exc, "cause", None) or exc
            meta["sensitivity_error"] = f"{type(cause).__name__}: {cause}"[:2000]
            if ev.warning:
                ev.warning(f"the sensitivity pass failed ({meta['sensitivity_error'][:300]}); "
                           "the search goes on without guided plans")
        else:
            meta["sensitivity"] = sens.to_dict()
            n_uniform = len(first)
            first = _distinct(space, first + guided)
            if ev.guided:
                ev.guided(time.perf_counter() - t0, len(first) - n_uniform)
    meta["population"] = len(first) or None  # the genetic samplers' first generation
    study.set_user_attr("slimtune", meta)
    first += initial_plans(space) if initial_plans else []
    for plan in first:
        study.enqueue_trial(space.params_of(plan), skip_if_exists=True)
    return meta


def _refuse_existing(run_dir: Path, storage: optuna.storages.BaseStorage, name: str) -> None:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return  # an empty database (a search that died before it began)
    n = len(study.get_trials(deepcopy=False))
    if "slimtune" in study.user_attrs or n:
        raise RunDirError(f"{run_dir} already holds a search ({n} trials); continue it with "
                          f"`slimtune search --resume {run_dir}` (add --trials N for a new "
                          "budget), or choose another --run-dir")


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def _sensitivity(
    config: SearchConfig, space: SearchSpace, teacher: torch.nn.Module, data: Any,
    teacher_metrics: dict[str, Any], teacher_ref: Any, concurrency: int, ev: SearchEvents,
    trust: Trust,
) -> Sensitivity:
    """The one-shot sensitivity pass (search/guided.py) as Ray tasks with the trials'
    resources, the layers dealt round-robin to ``concurrency`` tasks."""
    import ray

    layers = list(space.layers)
    n_tasks = max(1, min(concurrency, len(layers)))
    if ev.sensitivity:
        ev.sensitivity(len(layers), n_tasks)
    task = ray.remote(probe_task).options(num_cpus=config.cpus_per_trial,
                                          num_gpus=config.gpus_per_trial, max_retries=0)
    specs = [ProbeSpec(model=config.model, data=config.data, layers=tuple(layers[i::n_tasks]),
                       pruning=config.pruning,
                       data_dir=str(config.data_dir) if config.data_dir else None,
                       subset=config.subset, val_subset=config.val_subset,
                       threads=max(1, math.floor(config.cpus_per_trial)),
                       gpu_fraction=config.gpus_per_trial, trust=tuple(trust.to_list()))
             for i in range(n_tasks)]
    return measure_sensitivity(teacher, space, data.input_shape,
                               int(teacher_metrics["size_bytes"]),
                               lambda spec: task.remote(spec, teacher_ref), specs)


def _distinct(space: SearchSpace, plans: list[CompressionPlan]) -> list[CompressionPlan]:
    """``plans`` without repeats (by their study parameters), in order."""
    seen: set[str] = set()
    out = []
    for plan in plans:
        key = repr(sorted(space.params_of(plan).items()))
        if key not in seen:
            seen.add(key)
            out.append(plan)
    return out


def _loop(
    config: SearchConfig, run: Run, space: SearchSpace, teacher_ref: Any,
    concurrency: int, ev: SearchEvents,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]],
    shared: bool, retried: list[int], trust: Trust, signals: Signals,
) -> dict[str, Any]:
    import ray

    study = run.study
    task = ray.remote(trial_fn).options(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0
    )
    threads = max(1, math.floor(config.cpus_per_trial))
    counted = _counted(study)
    todo = max(0, config.trials - counted)
    counts: dict[str, Any] = {
        "done": 0, "failed": 0, "pruned": 0, "over_budget": 0, "running": 0,
        "total": todo, "budget": config.trials, "before": counted, "retried": len(retried),
        "hypervolume": 0.0, "front": 0, "epochs_saved": 0, "epochs_trained": 0,
    }
    teacher_metrics = run.teacher
    points = _nondominated([FrontPoint.of(t) for t in
                            study.get_trials(states=[TrialState.COMPLETE]) if _feasible(t)])
    # ``points`` is kept as the front of the feasible trials so far (same hypervolume as all
    # of them, and the early-stopping rule needs only it)
    counts["hypervolume"] = hypervolume(points, teacher_metrics)  # of the trials before
    pending: dict[Any, optuna.trial.Trial] = {}
    asking: optuna.trial.Trial | None = None
    plans: dict[int, dict[str, Any]] = {}
    started = 0
    storage = study._storage
    beat = time.monotonic()
    # breeding waits for the warm start: with a genetic sampler, a plan sampled while warm-
    # start trials still run would join the first generation as a random plan
    from optuna.samplers._ga import BaseGASampler

    genetic = isinstance(study.sampler, BaseGASampler)
    queued = len(study.get_trials(deepcopy=False, states=[TrialState.WAITING]))
    enqueued_running: set[int] = set()
    if ev.started:
        ev.started(todo, concurrency)
    try:
        while started < todo or pending:
            while started < todo and len(pending) < concurrency:
                if shared and started and _counted(study) >= config.trials:
                    todo = started  # other drivers of the shared study used the budget
                    break
                if genetic and not queued and enqueued_running:
                    break  # the warm start is still running: wait for it
                with warnings.catch_warnings():  # heartbeats are ours, not optimize()'s
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = study.ask()
                asking = trial  # a SIGINT from here to the submission must not leak it
                enqueued = "fixed_params" in trial._cached_frozen_trial.system_attrs
                if enqueued:
                    queued = max(0, queued - 1)
                    enqueued_running.add(trial.number)
                    _join_generation(study, trial)
                if shared:
                    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
                with _one_commit_for_params(study):
                    plan = space.sample(trial)
                plans[trial.number] = plan.to_dict()  # stored with the results: one commit
                front = tuple((p.trial, p.size_bytes, p.flops, p.accuracy)
                              for p in points)
                spec = TrialSpec(
                    model=config.model, data=config.data, plan=plan.to_dict(),
                    epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    seed=config.seed * 100003 + _seed_of(trial), threads=threads,
                    gpu_fraction=config.gpus_per_trial,
                    latency="latency" in config.objectives,
                    data_dir=str(config.data_dir) if config.data_dir else None,
                    subset=config.subset, val_subset=config.val_subset,
                    max_size=config.max_size,
                    max_flops=config.max_flops, front=front, trust=tuple(trust.to_list()),
                    # warm-start plans always train to the end: they are the reference the
                    # search must beat, and a genetic sampler's first generation
                    early_stop=config.early_stop and not enqueued,
                )
                pending[task.remote(spec, teacher_ref)] = trial
                asking = None
                started += 1
            counts["running"] = len(pending)
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1,
                                timeout=HEARTBEAT_INTERVAL if shared else None)
            if shared and time.monotonic() - beat >= HEARTBEAT_INTERVAL / 2:
                for t in pending.values():
                    storage.record_heartbeat(t._trial_id)  # type: ignore[attr-defined]
                beat = time.monotonic()
            for ref in ready:
                trial = pending[ref]  # stays pending (abandoned on SIGINT) until told
                enqueued_running.discard(trial.number)
                point, record = _finish(run, trial, ref, counts, config, points,
                                        teacher_metrics, plans.pop(trial.number))
                del pending[ref]
                if point is not None:
                    points[:] = _nondominated([*points, point])  # O(front), not O(trials)
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
        if signals.terminated:
            why = "the search was terminated (SIGTERM)"
        elif isinstance(exc, KeyboardInterrupt):
            why = "interrupted by the user (SIGINT)"
        else:
            why = f"the search stopped: {type(exc).__name__}: {exc}"[:500]
        try:
            _abandon(study, pending, f"{why}; retried on resume", reorder=not shared)
        except Exception:  # noqa: BLE001 - the storage itself failed: resume repairs it
            pass
        err = as_user_error(exc)
        if err is exc:
            raise
        raise err from None
    finally:  # once, not per trial: every storage write costs a commit
        study.set_user_attr("hypervolume", counts["hypervolume"])
    return counts


def _join_generation(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """Give an enqueued trial (the warm start, a retried plan) its generation in Optuna's
    genetic samplers (NSGA-II/III).

    They assign a trial its generation only when they sample its parameters, which an
    enqueued trial never asks them to do; without this the warm start would belong to no
    generation, the first generation would fill with random plans, and breeding from the
    warm start would begin only after ``population`` more trials (OptunaHub's
    "NSGA-II with initial trials" exists for the same reason)."""
    from optuna.samplers._ga import BaseGASampler

    sampler = study.sampler
    frozen = trial._cached_frozen_trial
    if not isinstance(sampler, BaseGASampler):
        return
    generation = sampler.get_trial_generation(study, frozen)  # computed and stored
    frozen.system_attrs[sampler._get_generation_key()] = generation  # and known to the trial


def _nondominated(points: list[FrontPoint]) -> list[FrontPoint]:
    """The points no other point beats on size, FLOPs and accuracy at once."""
    out = []
    for p in points:
        if not any(q.size_bytes <= p.size_bytes and q.flops <= p.flops
                   and q.accuracy >= p.accuracy
                   and (q.size_bytes, q.flops, q.accuracy) != (p.size_bytes, p.flops, p.accuracy)
                   for q in points):
            out.append(p)
    return out


@dataclass(frozen=True)
class TrialRecord:
    """What a progress display needs of a finished trial (no storage round trip)."""

    number: int
    state: TrialState
    user_attrs: dict[str, Any]
    values: list[float] | None
    constraints: dict[str, float] = field(default_factory=dict)


def _record(trial: optuna.trial.Trial, state: TrialState,
            values: list[float] | None = None) -> TrialRecord:
    """The record of a trial just told, from what the driver wrote (no storage read)."""
    frozen = trial._cached_frozen_trial
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
            trial.number, trial._cached_frozen_trial.user_attrs)))
    pending.clear()
    _requeue_first(study, retried, reorder)


def _rdb_backend(study: optuna.Study) -> Any:
    """The study's RDB storage (under Optuna's cache), or None for any other storage."""
    try:
        from optuna.storages._rdb.storage import RDBStorage
    except ImportError:  # pragma: no cover - another Optuna layout
        return None
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, RDBStorage) else None


@contextlib.contextmanager
def _one_commit_for_params(study: optuna.Study) -> Any:
    """Write the parameters a plan draws in one transaction at the end, not one commit per
    ``suggest_*`` (21 for small_cnn: most of the engine's overhead per trial), and look the
    trial up once for all of them rather than once each. Samplers read only finished
    trials, and the trial keeps its own parameters in memory meanwhile; if the process dies
    mid-plan the trial has fewer stored parameters, which resume handles (the retry draws
    the rest)."""
    backend = _rdb_backend(study)
    if backend is None:
        yield
        return
    from optuna.distributions import check_distribution_compatibility, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    queued: list[tuple[Any, ...]] = []
    backend._set_trial_param = lambda *args: queued.append(args)  # shadows the method
    try:
        yield
    finally:
        del backend._set_trial_param
        if queued:
            with _create_scoped_session(backend.scoped_session, True) as session:
                trial_id = queued[0][0]
                row = models.TrialModel.find_or_raise_by_id(trial_id, session)
                backend.check_trial_is_updatable(trial_id, row.state)
                for tid, name, value, dist, previous in queued:
                    if previous is None:  # the study's first use of this name: Optuna's
                        backend._set_trial_param_without_commit(  # own check reads the DB
                            session, tid, name, value, dist, None)
                        continue
                    check_distribution_compatibility(previous, dist)
                    session.add(models.TrialParamModel(
                        trial_id=tid, param_name=name, param_value=value,
                        distribution_json=distribution_to_json(dist)))


def _set_user_attrs(study: optuna.Study, trial: optuna.trial.Trial, attrs: dict[str, Any]) -> None:
    """All of a trial's user attributes in one transaction, not one commit each (the
    engine's overhead per trial is mostly storage commits). Uses the RDB storage's private
    per-attribute write inside one session; any other storage, one call per attribute."""
    backend = _rdb_backend(study)
    if backend is None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        for k, v in attrs.items():
            backend._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial._trial_id, k, v)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _finish(
    run: Run, trial: optuna.trial.Trial, ref: Any, counts: dict[str, Any],
    config: SearchConfig, points: list[FrontPoint], teacher: dict[str, Any],
    plan: dict[str, Any],
) -> tuple[FrontPoint | None, TrialRecord]:
    """Record one finished task in the study: the new feasible front candidate (or None)
    and the trial's record for the progress display."""
    import ray

    metrics = config.metrics
    try:
        out = ray.get(ref)
        values = [float(out.get(m, 0.0) if out.get("status") == "pruned" else out[m])
                  for m in metrics]  # a pruned trial's values are never told
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded, the search goes on
        cause = getattr(exc, "cause", None) or exc
        _set_user_attrs(run.study, trial,
                        {"plan": plan, "error": f"{type(cause).__name__}: {cause}"[:2000]})
        run.study.tell(trial, state=TrialState.FAIL)
        counts["failed"] += 1
        return None, _record(trial, TrialState.FAIL)
    status = out.get("status", "complete")
    trained = int(out.get("epochs_trained", config.epochs))
    counts["epochs_trained"] += trained
    attrs: dict[str, Any] = {"plan": plan, "status": status, "epochs_trained": trained,
                             "seconds": round(float(out["seconds"]), 3)}
    if config.storage is not None:
        attrs["host"] = socket.gethostname()  # where its artifact is
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
        measured = {"size": out["size_bytes"] / limits.get("size", 1) - 1.0,
                    "flops": out["flops"] / limits.get("flops", 1) - 1.0,
                    "accuracy": limits.get("accuracy", 0.0) - float(out["accuracy"])}
        for name in limits:  # the sampler reads these: it steers away from violations
            trial.set_constraint(name, measured[name])
            feasible = feasible and measured[name] <= 0
    if status == "over_budget":
        counts["over_budget"] += 1
        counts["epochs_saved"] += config.epochs
    elif out.get("artifact"):
        save(run.artifact_path(trial.number), out["artifact"])
    point = FrontPoint(trial=trial.number, accuracy=float(out["accuracy"]),
                       size_bytes=int(out["size_bytes"]), flops=int(out["flops"]), plan={})
    if feasible:
        counts["hypervolume"] = hypervolume([*points, point], teacher)
    attrs["hypervolume"] = counts["hypervolume"]  # of the feasible trials so far
    _set_user_attrs(run.study, trial, attrs)
    run.study.tell(trial, values)
    counts["done"] += 1
    return (point if feasible else None), _record(trial, TrialState.COMPLETE, values)
