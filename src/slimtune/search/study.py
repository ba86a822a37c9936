"""The Optuna study of a run directory: creation, opening, and the metadata it holds.

Everything about a run lives in the Optuna storage (``<run_dir>/study.db`` by default, or
the database of ``--storage URL``), so the study opens with the plain Optuna API::

    optuna.load_study(study_name="slimtune", storage="sqlite:///<run_dir>/study.db")

Study user attributes: ``slimtune`` (config, teacher metrics, input shape, layers).
Trial user attributes: ``plan``, ``val_accuracy``, ``size_bytes``, ``flops`` (effective
MACs), ``dense_flops``, ``bitops``, ``latency_ms`` (when measured), ``seconds``, and
``error`` for failed trials, ``status`` (complete / pruned / over_budget),
``epochs_trained``, ``curve`` (validation accuracy after each fine-tune epoch) and ``ran``
(the trial function's start and end, Unix seconds).
Constraints (``--max-size`` etc.) are Optuna constraints (``trial.constraints``).
Trial values: the objectives in the order of the study's
``metric_names`` (by default accuracy, size_bytes, flops).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from slimtune.errors import RunDirError

__all__ = [
    "STUDY_NAME", "DB_NAME", "OBJECTIVES", "DIRECTIONS", "Run", "storage_url", "create_study",
    "open_run", "make_sampler", "open_storage", "HEARTBEAT_INTERVAL", "HEARTBEAT_GRACE",
    "DEFAULT_POPULATION", "most_at_once",
]

STUDY_NAME = "slimtune"
DB_NAME = "study.db"
OBJECTIVES = ("accuracy", "size_bytes", "flops")
DIRECTIONS = ("maximize", "minimize", "minimize")


#: seconds between heartbeats of running trials in a shared (--storage) study; a RUNNING
#: trial without one for HEARTBEAT_GRACE seconds belongs to a dead driver
HEARTBEAT_INTERVAL = 20
HEARTBEAT_GRACE = 60


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / DB_NAME).resolve()}"


def open_storage(run_dir: Path, url: str | None = None) -> optuna.storages.BaseStorage:
    """SQLite in ``run_dir`` (one driver), or the shared database at ``url`` (drivers on
    many machines; their running trials send heartbeats so a dead one's can be retried)."""
    if url is None:
        return _sqlite_storage(storage_url(run_dir))
    if url.startswith("sqlite:"):
        return _sqlite_storage(url)
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
            engine_kwargs={"pool_pre_ping": True},
        )
    except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, a refused connection
        raise RunDirError(f"cannot open --storage {_redact(url)}: "
                          f"{type(exc).__name__}: {exc}") from None


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<the given URL>"


def _sqlite_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage on SQLite in WAL mode with ``synchronous=NORMAL``: a commit
    no longer waits for an fsync (about 30 commits a trial), and a killed process still
    loses nothing it committed; only an OS crash can lose the last transactions."""
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    def pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener: reopen with it
    return storage


#: population of the genetic samplers when no warm start sets it
DEFAULT_POPULATION = 10


def make_sampler(name: str, seed: int,
                 population: int | None = None) -> optuna.samplers.BaseSampler:
    """A sampler by name, seeded (Optuna does not store sampler state: reseed on resume).

    NSGA-II/III breed from a population of ``population`` finished trials: the search sets
    it to the number of warm-start plans, so the warm start *is* the first generation and
    breeding begins as soon as it has finished (a larger population would fill the rest of
    the first generation with random plans). Their mutation is polynomial: it moves a
    parameter near its parent's value instead of drawing it anew.
    """
    pop = max(2, population or DEFAULT_POPULATION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name in ("nsga2", "nsga3"):
            from optuna.samplers.nsgaii import PolynomialMutation

            cls = optuna.samplers.NSGAIISampler if name == "nsga2" \
                else optuna.samplers.NSGAIIISampler
            return cls(seed=seed, population_size=pop, mutation=PolynomialMutation())
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                              n_startup_trials=pop)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=pop)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise RunDirError(f"unknown sampler `{name}`")


def create_study(
    run_dir: Path,
    sampler: optuna.samplers.BaseSampler,
    metrics: list[str] | None = None,
    directions: list[str] | None = None,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
) -> optuna.Study:
    metrics = list(metrics or OBJECTIVES)
    directions = list(directions or DIRECTIONS)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(run_dir, storage),
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    if study.metric_names is not None and study.metric_names != metrics:
        raise RunDirError(
            f"{run_dir} holds a study of objectives {study.metric_names}, not {metrics}; "
            "choose another --run-dir"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    return study


@dataclass
class Run:
    """An existing run directory and its study."""

    dir: Path
    study: optuna.Study

    @property
    def meta(self) -> dict[str, Any]:
        return self.study.user_attrs["slimtune"]

    @property
    def teacher(self) -> dict[str, Any]:
        return self.meta["teacher"]

    def artifact_path(self, trial_number: int) -> Path:
        return self.dir / "trials" / f"trial-{trial_number:05d}.slim"


def open_run(
    run_dir: str | Path, sampler: optuna.samplers.BaseSampler | None = None,
    storage: str | None = None, study_name: str = STUDY_NAME,
) -> Run:
    """Open a finished or running slimtune run; :class:`RunDirError` if it is not one."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d} is not a directory; give the --run-dir of a slimtune search")
    if storage is None and not (d / DB_NAME).is_file():
        raise RunDirError(f"{d} is not a slimtune run (no {DB_NAME}; if its search used "
                          "--storage, give the same --storage URL); run `slimtune search` first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(d, storage),
                                  sampler=sampler)
    except Exception as exc:  # noqa: BLE001 - a missing study, a foreign database
        raise RunDirError(f"{d} is not a slimtune run: {exc}") from None
    if "slimtune" not in study.user_attrs or "teacher" not in study.user_attrs["slimtune"]:
        raise RunDirError(f"{d} is not a finished slimtune run (no teacher metrics in its study)")
    return Run(dir=d, study=study)


def most_at_once(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """The most of ``trials`` that ran at the same time, from each one's ``ran`` attribute
    ([start, end] in seconds since the epoch, as its Ray task measured them)."""
    spans = [t.user_attrs["ran"] for t in trials]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best
