"""The search: an Optuna ask/tell loop in the driver, trials run as Ray tasks.

The driver asks the sampler for a plan, submits the trial to Ray with the CPUs/GPUs it
asked for, and tells the study the three measured objectives when the task returns. It is
the only writer of the study, so SQLite in the run directory is safe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from slimtune import __version__
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, SearchAborted
from slimtune.export.artifact import save
from slimtune.models.teacher import TeacherConfig, load_or_train_teacher
from slimtune.models.zoo import build_model
from slimtune.search.config import SearchConfig
from slimtune.search.pareto import FrontPoint, hypervolume, pareto_front
from slimtune.search.ray_runner import RayCluster
from slimtune.search.study import Run, create_study, make_sampler
from slimtune.search.trial import TrialSpec, measure, run_trial
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace

__all__ = ["search", "SearchResult", "SearchEvents", "TrialRecord", "warm_start_plans"]


@dataclass
class SearchEvents:
    """Callbacks for progress display; every one is optional."""

    teacher_epoch: Callable[[int, int, float], None] | None = None
    teacher_step: Callable[[int, int], None] | None = None
    teacher_ready: Callable[[dict[str, Any], str], None] | None = None  # (metrics, source)
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
    teacher: torch.nn.Module, model: str, data: Any, latency: bool
) -> dict[str, Any]:
    """The teacher measured exactly as students are: through its own artifact."""
    plan = CompressionPlan()
    m = measure(teacher, model, data.num_classes, data.input_shape, plan, data.x_val,
                data.y_val, latency_device="cpu" if latency else None,
                test=(data.x_test, data.y_test))
    return {k: m[k] for k in (*_METRICS, "test_accuracy") if k in m}


def _check_existing(run_dir: Path, config: SearchConfig, study: optuna.Study) -> None:
    meta = study.user_attrs.get("slimtune")
    if meta is None:
        return
    old = meta["config"]
    for key in ("data", "model", "pruning", "subset"):
        before = old.get(key, getattr(SearchConfig, key, None))
        if before != getattr(config, key):
            raise ConfigError(
                f"{run_dir} holds a search of {key} `{before}`, not `{getattr(config, key)}`; "
                f"choose another --run-dir"
            )


def search(
    config: SearchConfig,
    events: SearchEvents | None = None,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
) -> SearchResult:
    """Run ``config.trials`` trials (more, if the run directory already holds some).

    ``trial_fn`` (tests and benchmarks) replaces the trial function run in each Ray task.
    """
    ev = events or SearchEvents()
    t_start = time.perf_counter()
    run_dir = config.resolved_run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} exists and is not a directory")
    data = load_dataset(config.data, config.data_dir, config.subset)
    build_model(config.model, data.num_classes, data.input_shape)  # fail fast on a bad name
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise ConfigError(f"--checkpoint {config.checkpoint} does not exist")
    cluster = RayCluster(config.address)
    try:
        concurrency = cluster.max_concurrent(config.cpus_per_trial, config.gpus_per_trial)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "trials").mkdir(exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = create_study(run_dir, make_sampler(config.sampler, config.seed),
                             config.metrics, config.directions)
        _check_existing(run_dir, config, study)

        teacher, source = load_or_train_teacher(
            run_dir / "teacher.pt", config.model, data,
            TeacherConfig(epochs=config.resolved_teacher_epochs, seed=config.seed),
            ev.teacher_epoch, data_name=config.data, subset=config.subset,
            checkpoint=config.checkpoint, on_step=ev.teacher_step,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        space = SearchSpace.from_model(teacher, data.input_shape, config.pruning)
        meta = study.user_attrs.get("slimtune")
        if meta is None:
            meta = {
                "version": __version__,
                "config": config.to_dict(),
                "teacher": _teacher_metrics(teacher, config.model, data,
                                            "latency" in config.objectives),
                "input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "layers": list(space.layers),
            }
            study.set_user_attr("slimtune", meta)
            if config.warm_start:
                for plan in warm_start_plans(space):
                    study.enqueue_trial(space.params_of(plan), skip_if_exists=True)
        if ev.teacher_ready:
            ev.teacher_ready(meta["teacher"], source)
        run = Run(dir=run_dir, study=study)
        counts = _loop(config, run, space, teacher, concurrency, ev, trial_fn)
    finally:
        cluster.shutdown()
    return SearchResult(run=run, front=pareto_front(study), counts=counts,
                        seconds=time.perf_counter() - t_start)


def _loop(
    config: SearchConfig, run: Run, space: SearchSpace, teacher: torch.nn.Module,
    concurrency: int, ev: SearchEvents,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
) -> dict[str, Any]:
    import ray

    study = run.study
    teacher_ref = ray.put({k: v.cpu() for k, v in teacher.state_dict().items()})
    task = ray.remote(trial_fn).options(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0
    )
    threads = max(1, math.floor(config.cpus_per_trial))
    counts: dict[str, Any] = {"done": 0, "failed": 0, "running": 0, "total": config.trials,
                              "hypervolume": 0.0, "front": 0}
    teacher_metrics = run.teacher
    points = [FrontPoint.of(t) for t in study.get_trials(states=[TrialState.COMPLETE])]
    counts["hypervolume"] = hypervolume(points, teacher_metrics)  # of earlier searches here
    pending: dict[Any, optuna.trial.Trial] = {}
    started = 0
    if ev.started:
        ev.started(config.trials, concurrency)
    try:
        while started < config.trials or pending:
            while started < config.trials and len(pending) < concurrency:
                trial = study.ask()
                plan = space.sample(trial)
                trial.set_user_attr("plan", plan.to_dict())
                spec = TrialSpec(
                    model=config.model, data=config.data, plan=plan.to_dict(),
                    epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    seed=config.seed * 100003 + trial.number, threads=threads,
                    gpu_fraction=config.gpus_per_trial,
                    latency="latency" in config.objectives,
                    data_dir=str(config.data_dir) if config.data_dir else None,
                    subset=config.subset,
                )
                pending[task.remote(spec, teacher_ref)] = trial
                started += 1
            counts["running"] = len(pending)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                trial = pending.pop(ref)
                point = _finish(run, trial, ref, counts, config.metrics, points, teacher_metrics)
                if point is not None:
                    points.append(point)
                counts["running"] = len(pending)
                if ev.trial_done:
                    ev.trial_done(_record(study, trial), counts)
                if config.max_failures and counts["failed"] >= config.max_failures:
                    last = _record(study, trial).user_attrs.get("error", "?")
                    _abandon(study, pending, "the search stopped: too many failed trials")
                    raise SearchAborted(
                        f"{counts['failed']} trials failed (--max-failures "
                        f"{config.max_failures}); the last: {last}"
                    )
    except KeyboardInterrupt:
        _abandon(study, pending, "interrupted by the user (SIGINT)")
        raise
    finally:  # once, not per trial: every storage write costs a commit
        study.set_user_attr("hypervolume", counts["hypervolume"])
    return counts


@dataclass(frozen=True)
class TrialRecord:
    """What a progress display needs of a finished trial (no storage round trip)."""

    number: int
    state: TrialState
    user_attrs: dict[str, Any]
    values: list[float] | None


def _record(study: optuna.Study, trial: optuna.trial.Trial) -> TrialRecord:
    frozen = study._storage.get_trial(trial._trial_id)  # one trial, from Optuna's cache
    return TrialRecord(frozen.number, frozen.state, frozen.user_attrs, frozen.values)


def _abandon(study: optuna.Study, pending: dict[Any, optuna.trial.Trial], reason: str) -> None:
    """Cancel running trials and record them as failed, so no trial is left RUNNING."""
    import ray

    for ref, trial in pending.items():
        ray.cancel(ref, force=True)
        trial.set_user_attr("error", reason)
        study.tell(trial, state=TrialState.FAIL)
    pending.clear()


def _finish(
    run: Run, trial: optuna.trial.Trial, ref: Any, counts: dict[str, Any], metrics: list[str],
    points: list[FrontPoint], teacher: dict[str, Any],
) -> FrontPoint | None:
    """Record one finished task in the study; the new front point, or None if it failed."""
    import ray

    try:
        out = ray.get(ref)
        values = [float(out[m]) for m in metrics]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded, the search goes on
        cause = getattr(exc, "cause", None) or exc
        trial.set_user_attr("error", f"{type(cause).__name__}: {cause}"[:2000])
        run.study.tell(trial, state=TrialState.FAIL)
        counts["failed"] += 1
        return None
    if out.get("artifact"):
        save(run.artifact_path(trial.number), out["artifact"])
    for key in _METRICS:
        if key in out:
            name = "val_accuracy" if key == "accuracy" else key
            trial.set_user_attr(name, out[key])
    trial.set_user_attr("seconds", round(float(out["seconds"]), 3))
    point = FrontPoint(trial=trial.number, accuracy=float(out["accuracy"]),
                       size_bytes=int(out["size_bytes"]), flops=int(out["flops"]), plan={})
    hv = hypervolume([*points, point], teacher)
    trial.set_user_attr("hypervolume", hv)  # of all complete trials up to this one
    run.study.tell(trial, values)
    counts["done"] += 1
    counts["hypervolume"] = hv
    return point
