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
