"""Optuna studies stored in a real PostgreSQL server (tests/pg_server.py) through SQLAlchemy."""

from __future__ import annotations

import threading
import uuid

import optuna
import pytest

TRIALS_PER_THREAD = 4


def test_multi_objective_study_from_two_threads_in_postgres(postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    storage = optuna.storages.RDBStorage(postgres_url)
    optuna.create_study(study_name=name, storage=storage, directions=["minimize", "maximize"])

    told: dict[int, tuple[str, list[float], float]] = {}  # trial number -> (thread, values, x)
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(2, timeout=30)

    def worker(tag: str) -> None:
        try:
            own = optuna.storages.RDBStorage(postgres_url)
            study = optuna.load_study(study_name=name, storage=own)
            start.wait()
            for _ in range(TRIALS_PER_THREAD):
                trial = study.ask()
                x = trial.suggest_float("x", 0.0, 1.0)
                trial.set_user_attr("thread", tag)
                values = [x * x, 1.0 - x]
                study.tell(trial, values)
                with lock:
                    told[trial.number] = (tag, values, x)
            own.engine.dispose()
        except BaseException as e:  # noqa: B036  (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]

    trials = optuna.load_study(study_name=name, storage=storage).trials
    storage.engine.dispose()
    assert len(trials) == 2 * TRIALS_PER_THREAD
    assert sorted(t.number for t in trials) == list(range(2 * TRIALS_PER_THREAD))
    assert sorted(told) == sorted(t.number for t in trials), "each ask got its own trial"
    for t in trials:
        tag, values, x = told[t.number]
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == pytest.approx(values)
        assert t.params == {"x": pytest.approx(x)}
        assert t.user_attrs == {"thread": tag}
    assert {t.user_attrs["thread"] for t in trials} == {"a", "b"}


def test_search_with_storage_runs_four_trials_at_once_in_postgres(postgres_url, ray_session,
                                                                   tmp_path):
    """`--storage URL`: the study lives in PostgreSQL; 4 trials of 0.5 CPU share the session's
    2 CPUs at once, each telling its result into the server. The real trial function runs
    behind a barrier (tests/user_code.py) that lets the first trials in only once 4 are
    inside at the same time: the engine must submit 4 and Ray must run 4, or it times out."""
    from slimtune.search import SearchConfig
    from slimtune.search.engine import resume, search
    from slimtune.search.study import DB_NAME, most_at_once, open_run
    from tests.user_code import BARRIER_NAME, Barrier, gated_trial

    barrier = ray_session.remote(Barrier).options(name=BARRIER_NAME, num_cpus=0).remote(4)
    try:
        run_dir = tmp_path / "pg-run"
        config = SearchConfig(trials=8, epochs=1, teacher_epochs=2, run_dir=run_dir,
                              cpus_per_trial=0.5, storage=postgres_url, study_name="pg-search")
        result = search(config, trial_fn=gated_trial)
        stats = ray_session.get(barrier.stats.remote())
    finally:
        ray_session.kill(barrier)
    assert not (run_dir / DB_NAME).exists()  # nothing in SQLite
    study = optuna.load_study(study_name="pg-search", storage=postgres_url)
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 8, [(t.number, t.state.name, t.user_attrs.get("error"))
                            for t in study.trials]
    assert stats["arrived"] == 8 and stats["peak"] == 4  # four at once, never more
    assert most_at_once(done) == 4
    assert "slimtune" in study.user_attrs and study.user_attrs["hypervolume"] > 0
    assert {p.trial for p in result.front} <= {t.number for t in done}
    # the run opens (front, export) through the same URL; a second search is refused
    assert open_run(run_dir, storage=postgres_url, study_name="pg-search").teacher
    more = resume(run_dir, storage=postgres_url, study_name="pg-search", trials=10)
    assert more.counts["total"] == 2
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 10


def test_resume_retries_trials_whose_heartbeat_stopped(postgres_url, ray_session, tmp_path,
                                                       monkeypatch):
    """In a shared study a RUNNING trial is another driver's until its heartbeat is older
    than the grace period; then resume marks it failed and runs its plan again."""
    from slimtune.search import SearchConfig
    from slimtune.search import study as study_mod
    from slimtune.search.engine import resume, search

    run_dir = tmp_path / "pg-stale"
    search(SearchConfig(trials=2, epochs=0, teacher_epochs=2, run_dir=run_dir,
                        storage=postgres_url, study_name="pg-stale", warm_start=False))
    storage = study_mod.open_storage(run_dir, postgres_url)
    study = optuna.load_study(study_name="pg-stale", storage=storage)
    dist = {"alpha": optuna.distributions.FloatDistribution(0.1, 0.9)}
    live, dead = study.ask(dist), study.ask(dist)
    dead_alpha = dead.params["alpha"]
    storage.record_heartbeat(live._trial_id)
    storage.record_heartbeat(dead._trial_id)
    import time

    time.sleep(2.5)
    storage.record_heartbeat(live._trial_id)  # still alive
    monkeypatch.setattr(study_mod, "HEARTBEAT_GRACE", 2)
    # budget 10: 2 done + 1 live (another driver's: it counts) + 7 to run, the retried plan
    # first (no warm start here; in a shared study retries join the end of the queue)
    result = resume(run_dir, storage=postgres_url, study_name="pg-stale", trials=10)
    trials = {t.number: t for t in result.run.study.trials}
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[dead.number].user_attrs["interrupted"] is True
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING  # not ours to fail
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].params["alpha"] == dead_alpha
    assert result.counts["total"] == 7  # the live trial counts toward the budget
    assert retry[0].state == optuna.trial.TrialState.COMPLETE
