"""How a new study begins: the teacher measured, the run's metadata stored, and the warm
start enqueued ahead of the sampler's plans: uniform plans (every layer alike, light to
heavy), then plans guided by the one-shot sensitivity pass (run as Ray tasks; in the
multi-fidelity search also the one-shot allocator's plans along the front, which rung 0
screens for no fine-tune epoch), then the caller's own."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch

from slimtune import __version__
from slimtune.objectives.measure import Measured
from slimtune.search.allocate import spread_plans
from slimtune.search.config import SearchConfig
from slimtune.search.drivers import QUEUED_ATTR
from slimtune.search.events import SearchEvents
from slimtune.search.guided import (
    ProbeSpec,
    Sensitivity,
    guided_plans,
    measure_sensitivity,
    probe_task,
)
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace
from slimtune.trust import Trust

__all__ = ["warm_start_plans", "SCREENED_ONE_SHOT"]

#: one-shot allocator plans (search/allocate.py) the multi-fidelity search's warm start
#: adds: screening one costs a BatchNorm re-estimation, not a fine-tune
SCREENED_ONE_SHOT = 24

#: the sensitivity pass: (config, space, teacher, data, teacher metrics, teacher_ref,
#: concurrency, events, trust) -> Sensitivity (:func:`_sensitivity`)
SensitivityPass = Callable[..., Sensitivity]


def warm_start_plans(space: SearchSpace) -> list[CompressionPlan]:
    """Uniform plans, light to heavy, enqueued first so the front spans the range early."""
    return space.uniform_plans()


def _teacher_metrics(
    teacher: torch.nn.Module, model: str, data: Any, config: SearchConfig
) -> dict[str, Any]:
    """The teacher measured exactly as students are: through its own artifact (its latency
    timed as a trial's: the same runtime, batch and threads)."""
    measured = Measured.of(teacher, model, data.num_classes, data.input_shape,
                           CompressionPlan(), data.val, "cpu", latency=config.latency,
                           calibrate=data.train)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, math.floor(config.cpus_per_trial)))
    try:
        return measured.results(config.objectives, test=data.test)
    finally:
        torch.set_num_threads(threads)


def _begin_study(
    config: SearchConfig, study: optuna.Study, space: SearchSpace, teacher: torch.nn.Module,
    data: Any, teacher_ref: Any, concurrency: int, ev: SearchEvents, source: str,
    initial_plans: Callable[[SearchSpace], list[CompressionPlan]] | None, trust: Trust,
    sensitivity: SensitivityPass, queue: optuna.Study | None = None,
) -> dict[str, Any]:
    """A new study: measure the teacher, run the sensitivity pass (``sensitivity``, i.e.
    :func:`_sensitivity`), store the run's metadata and enqueue the warm start (uniform
    plans, then guided ones, then ``initial_plans``) in ``queue`` (default: ``study``; the
    multi-fidelity search's screening study). A sensitivity pass that fails costs only
    the guided plans (a warning says why)."""
    meta: dict[str, Any] = {
        "version": __version__,
        "config": config.to_dict(),
        "teacher": _teacher_metrics(teacher, config.model, data, config),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "layers": list(space.layers),
    }
    if ev.teacher_ready:
        ev.teacher_ready(meta["teacher"], source)
    first = [(p, "uniform") for p in warm_start_plans(space)] if config.warm_start else []
    if config.warm_start and config.guided:
        t0 = time.perf_counter()
        try:
            sens = sensitivity(config, space, teacher, data, meta["teacher"], teacher_ref,
                               concurrency, ev, trust)
            guided = [(p, "guided") for p in guided_plans(sens, space)]
            if config.fidelity:
                guided += [(p, "one-shot") for p in spread_plans(sens, space,
                                                                 SCREENED_ONE_SHOT)]
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
    first += [(p, "user") for p in initial_plans(space)] if initial_plans else []
    for plan, phase in first:  # the report tells the warm start's plans apart by ``phase``
        (queue or study).enqueue_trial(space.params_of(plan), user_attrs={"phase": phase},
                                       skip_if_exists=True)
    study.set_user_attr(QUEUED_ATTR, True)  # drivers joining a shared study wait for it
    return meta


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
                       gpu_fraction=config.gpus_per_trial, trust=tuple(trust.to_list()),
                       knobs=config.knobs, space=config.space)
             for i in range(n_tasks)]
    return measure_sensitivity(teacher, space, data.input_shape,
                               int(teacher_metrics["size_bytes"]),
                               lambda spec: task.remote(spec, teacher_ref), specs)


def _distinct(space: SearchSpace, plans: list[tuple[CompressionPlan, str]]
              ) -> list[tuple[CompressionPlan, str]]:
    """``plans`` (each with its phase) without repeats (by their study parameters), in
    order: a plan found twice keeps its first phase."""
    seen: set[str] = set()
    out = []
    for plan, phase in plans:
        key = repr(sorted(space.params_of(plan).items()))
        if key not in seen:
            seen.add(key)
            out.append((plan, phase))
    return out
