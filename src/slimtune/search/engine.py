"""The search: an Optuna ask/tell loop in the driver, trials run as Ray tasks.

The driver asks the sampler for a plan, submits the trial to Ray with the CPUs/GPUs it
asked for, and tells the study the three measured objectives when the task returns. It is
the only writer of the study, so SQLite in the run directory is safe.

This module reads top to bottom: :func:`resume` rebuilds the stored settings and calls
:func:`search`, which checks, locks the run directory, opens the study, gets the teacher,
begins a new study with its warm start and runs the loop. The parts live beside it:

- ``events.py``: ``SearchEvents``, ``TrialRecord``, ``SearchResult``;
- ``rundir.py``: the run directory's lock, the refusal of a second search, the settings
  a resumed search keeps;
- ``warm_start.py``: the teacher's metrics, the run's metadata and the warm start
  (uniform plans, the sensitivity pass, guided plans);
- ``loop.py``: the ask/tell loop, recording a finished trial, abandoning running ones;
- ``optuna_internals.py``: every use of Optuna's private API (stale trials, retries,
  heartbeats, one commit per trial's writes);
- ``artifact_store.py``: where trial artifacts and the teacher go (``--artifact-store``);
- ``drivers.py``: many drivers on one shared study (who begins it, the budget's lock);
- ``node_loss.py``: trials lost with their Ray node, run again.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from slimtune import inmemory
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, RunDirError
from slimtune.models.teacher import TeacherConfig, load_or_train_teacher
from slimtune.search import drivers
from slimtune.search.artifact_store import DEFAULT_DIR, TEACHER_ATTR, TrialStore
from slimtune.search.checks import check_model_runs, check_run_dir
from slimtune.search.config import RESUME_OVERRIDES, SearchConfig
from slimtune.search.events import SearchEvents, SearchResult, TrialRecord
from slimtune.search.fidelity_loop import _fidelity_loop, screen_name
from slimtune.search.loop import _loop
from slimtune.search.optuna_internals import (
    _fail_stale,
    _retry_attrs,  # noqa: F401 - tests import it here
)
from slimtune.search.pareto import pareto_front
from slimtune.search.ray_runner import RayCluster
from slimtune.search.rundir import _check_settings, _refuse_existing, _RunLock
from slimtune.search.rung import RungSpec, run_rung
from slimtune.search.signals import Terminated, sigterm_as_interrupt
from slimtune.search.study import Run, create_study, make_sampler, open_run, open_storage
from slimtune.search.trial import TrialSpec, run_trial
from slimtune.search.warm_start import (
    _begin_study,
    _distinct,  # noqa: F401 - tests import it here
    _sensitivity,
    warm_start_plans,
)
from slimtune.spaces.plan import CompressionPlan
from slimtune.spaces.space import SearchSpace
from slimtune.trust import Trust, check

__all__ = ["search", "resume", "SearchResult", "SearchEvents", "TrialRecord",
           "warm_start_plans", "Terminated"]


def resume(
    run_dir: str | Path,
    events: SearchEvents | None = None,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
    *,
    trust_module: str | list[str] | None = None,
    job_fn: Callable[[RungSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_rung,
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
    return search(config, events, trial_fn, resume=True, trust_module=trust_module,
                  job_fn=job_fn)


def _adopt_store(config: SearchConfig, store: TrialStore, meta: dict[str, Any],
                 run_dir: Path) -> tuple[SearchConfig, TrialStore]:
    """A driver joining a shared study writes to the study's artifact store: the one it
    gave must be that one (a store given by default, its own ``RUN_DIR/artifacts``, gives
    way to the study's)."""
    theirs = meta["config"].get("artifact_store")
    if theirs is None or theirs == config.artifact_store:
        return config, store
    if config.artifact_store != str((run_dir / DEFAULT_DIR).absolute()):
        raise ConfigError(f"the study keeps its artifacts in {theirs}, not "
                          f"{config.artifact_store}: join it with --artifact-store {theirs} "
                          "(or without --artifact-store)")
    config = replace(config, artifact_store=theirs)
    store = TrialStore.of(theirs, run_dir)
    store.check()
    return config, store


def search(
    config: SearchConfig,
    events: SearchEvents | None = None,
    trial_fn: Callable[[TrialSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_trial,
    *,
    resume: bool = False,
    initial_plans: Callable[[SearchSpace], list[CompressionPlan]] | None = None,
    trust_module: str | list[str] | None = None,
    job_fn: Callable[[RungSpec, dict[str, torch.Tensor]], dict[str, Any]] = run_rung,
) -> SearchResult:
    """Run a search of ``config.trials`` trials (or, multi-fidelity, of
    ``config.budget_epochs`` fine-tune epochs); with ``resume``, continue the one in
    ``config.run_dir`` up to that many (see :func:`resume`).

    ``trial_fn`` (tests and benchmarks) replaces the trial function run in each Ray task,
    ``job_fn`` the rung job of the multi-fidelity search (search/rung.py).
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
    held: list[Any] = []  # the actors holding Python objects for the workers (inmemory)
    try:
        with sigterm_as_interrupt() as signals:  # SIGTERM is handled as Ctrl-C
            concurrency = cluster.max_concurrent(config.cpus_per_trial, config.gpus_per_trial)
            # a model or data set given as Python objects: held for the workers meanwhile
            held = inmemory.serve(config.model, config.data)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "trials").mkdir(exist_ok=True)
                lock = _RunLock(run_dir)
            except OSError as exc:
                raise RunDirError(f"cannot write --run-dir {run_dir}: {exc.strerror or exc}"
                                  ) from None
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            if shared and config.artifact_store is None:  # every driver must reach it
                config = replace(config, artifact_store=str((run_dir / DEFAULT_DIR).absolute()))
            store = TrialStore.of(config.artifact_store, run_dir)
            store.check()  # before the study is made: a bad store is one line, at once

            def make(load: bool) -> optuna.Study:
                return create_study(run_dir, make_sampler(config.sampler, config.seed),
                                    config.metrics, config.directions, config.storage,
                                    config.study_name, load_if_exists=load)

            study, created = drivers.create_or_join(make)
            if created and shared:
                study.set_user_attr(drivers.BEGUN_ATTR, drivers.me())
            meta = study.user_attrs.get("slimtune")
            if shared and not created and not resume:  # another driver's study: join it
                meta = drivers.wait_until_begun(study, lambda begun: ev.note and ev.note(
                    drivers.waiting_message(begun, config.study_name)))
                config, store = _adopt_store(config, store, meta, run_dir)
            if meta is not None and not resume and not shared:
                raise RunDirError(
                    f"the study `{config.study_name}` in --storage already holds a search; "
                    f"continue it with `slimtune search --resume "
                    f"{shlex.quote(str(run_dir))} --storage URL`")
            if meta is not None:
                _check_settings(run_dir, config, meta)
                if shared and resume and not study.user_attrs.get(drivers.QUEUED_ATTR):
                    # its first driver died while enqueueing: what it enqueued is the start
                    study.set_user_attr(drivers.QUEUED_ATTR, True)
            driver = drivers.join_as_driver(study) if shared else 0
            retried = _fail_stale(study, all_running_dead=not shared)
            screen = None  # the multi-fidelity search's screening study (fidelity_loop.py)
            if config.fidelity:
                screen = create_study(run_dir, make_sampler(config.sampler, config.seed),
                                      config.metrics, config.directions, config.storage,
                                      screen_name(config.study_name))
                retried += _fail_stale(screen, all_running_dead=True)
            proposer = screen or study  # the study whose sampler proposes the plans
            n_before = len(proposer.get_trials(deepcopy=False))

            teacher_ref_attr = study.user_attrs.get(TEACHER_ATTR)
            if teacher_ref_attr is not None:  # the study's teacher, whoever trained it
                store.fetch_teacher(teacher_ref_attr, run_dir / "teacher.pt")
            teacher, source = load_or_train_teacher(
                run_dir / "teacher.pt", config.model, data,
                TeacherConfig(epochs=config.resolved_teacher_epochs, seed=config.seed),
                ev.teacher_epoch, data_name=config.data, subset=config.subset,
                checkpoint=config.checkpoint, on_step=ev.teacher_step,
                device="cuda" if torch.cuda.is_available() else "cpu", trust=trust,
                source=named_by,
            )
            if teacher_ref_attr is None and (shared or config.artifact_store is not None):
                store.put_teacher(study, run_dir / "teacher.pt")  # for joiners, finetune
            space = SearchSpace.from_model(teacher, data.input_shape, config.pruning,
                                             config.knobs, rules=config.space)
            teacher_ref = ray.put({k: v.cpu() for k, v in teacher.state_dict().items()})
            meta = study.user_attrs.get("slimtune")
            if meta is None:
                meta = _begin_study(config, study, space, teacher, data, teacher_ref,
                                    concurrency, ev, source, initial_plans, trust,
                                    _sensitivity,  # looked up here: a test replaces it
                                    queue=proposer)
            elif ev.teacher_ready:
                ev.teacher_ready(meta["teacher"], source)
            # the warm start is the genetic samplers' first generation; Optuna keeps no
            # sampler state, so a resumed run reseeds (the same seed would replay the draws)
            population = meta.get("population", len(space.uniform_levels())
                                  if config.warm_start else None)
            # each driver of a shared study its own seed: the same seed would propose the
            # same plans from the same study
            proposer.sampler = make_sampler(
                config.sampler, config.seed + 7919 * n_before + 104729 * driver, population)
            run = Run(dir=run_dir, study=study, storage=config.storage,
                      artifact_store=config.artifact_store)
            if screen is not None:
                counts = _fidelity_loop(config, run, screen, space, teacher_ref, concurrency,
                                        ev, job_fn, trust, signals)
            else:
                counts = _loop(config, run, space, teacher_ref, concurrency, ev, trial_fn,
                               shared, retried, trust, signals, driver)
    finally:
        if lock is not None:
            lock.release()
        inmemory.release(held)
        cluster.shutdown()
    return SearchResult(run=run, front=pareto_front(study), counts=counts,
                        seconds=time.perf_counter() - t_start)
