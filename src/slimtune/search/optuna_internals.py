"""Every use of Optuna's private API, in one place: written against Optuna 5.0.0.

The ask/tell loop needs what ``study.optimize`` does for itself (heartbeats, failing stale
trials, genetic generations) and fewer storage commits than the public API makes. What is
private here, and where it lives in Optuna 5.0.0:

- ``Study._storage``, ``Study._study_id``, ``Trial._trial_id``,
  ``Trial._cached_frozen_trial`` (the trial's frozen view kept in memory);
- ``RDBStorage._get_stale_trial_ids``, ``RDBStorage.record_heartbeat`` (heartbeats of a
  shared study) and, under Optuna's ``_CachedStorage``, the ``_backend`` RDB storage with
  ``_set_trial_param``, ``_set_trial_param_without_commit``,
  ``_set_trial_attr_without_commit``, ``check_trial_is_updatable``, ``scoped_session``;
- ``optuna.storages._rdb.storage._create_scoped_session``, ``optuna.storages._rdb.models``;
- ``optuna.samplers._ga.BaseGASampler`` with ``get_trial_generation`` and
  ``_get_generation_key``; the ``fixed_params`` system attribute of an enqueued trial;
- ``optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX``: the ``artifacts:<id>`` system
  attribute by which ``optuna.artifacts`` (and optuna-dashboard) list an artifact.

A new Optuna version is checked here first (tests/test_resume.py and tests/test_engine.py
exercise every function).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX as ARTIFACTS_ATTR_PREFIX
from optuna.trial import TrialState

# -- the trial and the sampler -----------------------------------------------------------


def _frozen(trial: optuna.trial.Trial) -> optuna.trial.FrozenTrial:
    """The trial as the driver last wrote it, kept in memory by Optuna (no storage read)."""
    return trial._cached_frozen_trial


def _is_enqueued(trial: optuna.trial.Trial) -> bool:
    """The trial was enqueued (the warm start, a retry): its parameters are fixed."""
    return "fixed_params" in trial._cached_frozen_trial.system_attrs


def _is_genetic(sampler: optuna.samplers.BaseSampler) -> bool:
    """NSGA-II/III: a sampler that breeds generations."""
    from optuna.samplers._ga import BaseGASampler

    return isinstance(sampler, BaseGASampler)


def _seed_of(trial: optuna.trial.Trial) -> int:
    """The trial number a trial's seed comes from: its own, or for a retry the first
    attempt's."""
    first = trial._cached_frozen_trial.user_attrs.get("seed_of")
    return trial.number if first is None else int(first)


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


# -- heartbeats, stale trials and retries -------------------------------------------------


def _record_heartbeats(study: optuna.Study, trials: Iterable[optuna.trial.Trial]) -> None:
    """A heartbeat for each of ``trials`` (a shared study's storage only has them)."""
    storage = study._storage
    for t in trials:
        storage.record_heartbeat(t._trial_id)  # type: ignore[attr-defined]


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


#: the user attributes a queued plan carries (rewritten with it when the queue reorders)
_QUEUED_ATTRS = ("retry_of", "seed_of", "phase")


def _retry_attrs(number: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of the retry of trial ``number``: which trial it retries, and
    whose seed it keeps (the first attempt's: a retried plan trains exactly as it would
    have)."""
    first = attrs.get("seed_of")
    out = {"retry_of": number, "seed_of": number if first is None else first}
    if "phase" in attrs:
        out["phase"] = attrs["phase"]
    return out


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
         {k: w.user_attrs.get(k) for k in _QUEUED_ATTRS}) for w in waiting]
    slots = study.get_trials(deepcopy=False, states=[TrialState.WAITING])  # by number
    for slot, (params, attrs) in zip(slots, order, strict=True):
        storage.set_trial_system_attr(slot._trial_id, "fixed_params", params)
        for key in _QUEUED_ATTRS:  # None clears what the slot held before
            storage.set_trial_user_attr(slot._trial_id, key, attrs.get(key))


# -- fewer commits: a trial's writes in one transaction ------------------------------------


def _count_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """How many trials of the study are in ``states``: one COUNT query on an RDB storage
    (Optuna's ``get_n_trials`` reads every trial to count them)."""
    backend = _rdb_backend(study)
    if backend is None:
        return int(study._storage.get_n_trials(study._study_id, states))
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        return int(session.query(models.TrialModel)
                   .filter(models.TrialModel.study_id == study._study_id,
                           models.TrialModel.state.in_(list(states)))
                   .count())


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


def _set_user_attrs(study: optuna.Study, trial: optuna.trial.Trial, attrs: dict[str, Any],
                    system: dict[str, Any] | None = None) -> None:
    """All of a trial's user attributes (and ``system`` attributes: an artifact's record)
    in one transaction, not one commit each (the engine's overhead per trial is mostly
    storage commits). Uses the RDB storage's private per-attribute write inside one
    session; any other storage, one call per attribute."""
    system = system or {}
    backend = _rdb_backend(study)
    if backend is None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        for k, v in system.items():
            study._storage.set_trial_system_attr(trial._trial_id, k, v)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        for k, v in attrs.items():
            backend._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial._trial_id, k, v)
        for k, v in system.items():
            backend._set_trial_attr_without_commit(
                session, models.TrialSystemAttributeModel, trial._trial_id, k, v)
    trial._cached_frozen_trial.user_attrs.update(attrs)
    trial._cached_frozen_trial.system_attrs.update(system)
