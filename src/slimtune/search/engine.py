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

from slimtune import __version__
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError
from slimtune.export.artifact import decode, save
from slimtune.models.teacher import TeacherConfig, load_or_train_teacher
from slimtune.models.zoo import build_model
from slimtune.objectives.accuracy import accuracy
from slimtune.search.config import SearchConfig
from slimtune.search.pareto import FrontPoint, pareto_front
from slimtune.search.ray_runner import RayCluster
from slimtune.search.study import Run, create_study, make_sampler
from slimtune.search.trial import TrialSpec, measure, run_trial
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace

__all__ = ["search", "SearchResult", "SearchEvents", "warm_start_plans"]


@dataclass
class SearchEvents:
    """Callbacks for progress display; every one is optional."""

    teacher_epoch: Callable[[int, int, float], None] | None = None
    teacher_step: Callable[[int, int], None] | None = None
    teacher_ready: Callable[[dict[str, Any], str], None] | None = None  # (metrics, source)
    started: Callable[[int, int], None] | None = None  # (trials to run, concurrency)
    trial_done: Callable[[optuna.trial.FrozenTrial, dict[str, int]], None] | None = None


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
                data.y_val, latency_device="cpu" if latency else None)
    exported, _ = decode(m["artifact"])
    out = {k: m[k] for k in _METRICS if k in m}
    out["test_accuracy"] = accuracy(exported, data.x_test, data.y_test)
    return out


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


def search(config: SearchConfig, events: SearchEvents | None = None) -> SearchResult:
    """Run ``config.trials`` trials (more, if the run directory already holds some)."""
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
        counts = _loop(config, run, space, teacher, concurrency, ev)
    finally:
        cluster.shutdown()
    return SearchResult(run=run, front=pareto_front(study), counts=counts,
                        seconds=time.perf_counter() - t_start)


def _loop(
    config: SearchConfig, run: Run, space: SearchSpace, teacher: torch.nn.Module,
    concurrency: int, ev: SearchEvents,
) -> dict[str, int]:
    import ray

    study = run.study
    teacher_ref = ray.put({k: v.cpu() for k, v in teacher.state_dict().items()})
    task = ray.remote(run_trial).options(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0
    )
    threads = max(1, math.floor(config.cpus_per_trial))
    counts = {"done": 0, "failed": 0, "running": 0, "total": config.trials}
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
                _finish(run, trial, ref, counts, config.metrics)
                counts["running"] = len(pending)
                if ev.trial_done:
                    ev.trial_done(study.trials[trial.number], counts)
    except KeyboardInterrupt:
        for ref, trial in pending.items():
            ray.cancel(ref, force=True)
            trial.set_user_attr("error", "interrupted by the user (SIGINT)")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    return counts


def _finish(
    run: Run, trial: optuna.trial.Trial, ref: Any, counts: dict[str, int], metrics: list[str]
) -> None:
    import ray

    try:
        out = ray.get(ref)
        values = [float(out[m]) for m in metrics]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded, the search goes on
        cause = getattr(exc, "cause", None) or exc
        trial.set_user_attr("error", f"{type(cause).__name__}: {cause}"[:2000])
        run.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        counts["failed"] += 1
        return
    save(run.artifact_path(trial.number), out["artifact"])
    for key in _METRICS:
        if key in out:
            name = "val_accuracy" if key == "accuracy" else key
            trial.set_user_attr(name, out[key])
    trial.set_user_attr("seconds", round(float(out["seconds"]), 3))
    run.study.tell(trial, values)
    counts["done"] += 1
