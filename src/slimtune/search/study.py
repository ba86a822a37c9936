"""The Optuna study of a run directory: creation, opening, and the metadata it holds.

Everything about a run lives in the Optuna storage (``<run_dir>/study.db`` by default, or
the database of ``--storage URL``), so the study opens with the plain Optuna API::

    optuna.load_study(study_name="slimtune", storage="sqlite:///<run_dir>/study.db")

(``storage_url(run_dir)`` builds that URL for any path; ``open_run`` reads it read-only.)

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

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from slimtune.errors import ConfigError, RunDirError
from slimtune.objectives.table import DEFAULT_OBJECTIVES
from slimtune.objectives.table import OBJECTIVES as OBJECTIVE_TABLE
from slimtune.search import storage as _storage
from slimtune.search.artifact_store import ARTIFACT_ATTR, TrialStore
from slimtune.search.config import SAMPLERS
from slimtune.search.storage import DB_NAME, storage_url

__all__ = [
    "STUDY_NAME", "DB_NAME", "OBJECTIVES", "DIRECTIONS", "Run", "storage_url", "create_study",
    "open_run", "make_sampler", "open_storage", "HEARTBEAT_INTERVAL", "HEARTBEAT_GRACE",
    "DEFAULT_POPULATION", "most_at_once",
]

STUDY_NAME = "slimtune"
#: the metrics and directions of a study of the default objectives
OBJECTIVES = tuple(OBJECTIVE_TABLE[o].metric for o in DEFAULT_OBJECTIVES)
DIRECTIONS = tuple(OBJECTIVE_TABLE[o].direction for o in DEFAULT_OBJECTIVES)


#: seconds between heartbeats of running trials in a shared (--storage) study; a RUNNING
#: trial without one for HEARTBEAT_GRACE seconds belongs to a dead driver
HEARTBEAT_INTERVAL = 20
HEARTBEAT_GRACE = 60


def open_storage(run_dir: Path, url: str | None = None, *,
                 read_only: bool = False) -> optuna.storages.BaseStorage:
    """SQLite in ``run_dir`` (one driver), or the shared database at ``url`` (drivers on
    many machines; their running trials send heartbeats so a dead one's can be retried).
    ``read_only``: for reading a run (creates and changes no file). A study file that is
    not a readable Optuna study is one :class:`RunDirError` (see
    :mod:`slimtune.search.storage`)."""
    return _storage.open_storage(run_dir, url, read_only=read_only,
                                 heartbeat_interval=HEARTBEAT_INTERVAL,
                                 grace_period=HEARTBEAT_GRACE)


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
    raise ConfigError(f"`--sampler` must be one of {', '.join(SAMPLERS)}, but got {name!r}")


def create_study(
    run_dir: Path,
    sampler: optuna.samplers.BaseSampler,
    metrics: list[str] | None = None,
    directions: list[str] | None = None,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    load_if_exists: bool = True,
) -> optuna.Study:
    """The study of a search (made, or opened with ``load_if_exists``; without it an
    existing one is Optuna's ``DuplicatedStudyError``, which tells the drivers of a shared
    study which one made it)."""
    metrics = list(metrics or OBJECTIVES)
    directions = list(directions or DIRECTIONS)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(run_dir, storage),
        directions=directions,
        sampler=sampler,
        load_if_exists=load_if_exists,
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
    #: the ``--storage`` URL it was opened with (None: the SQLite file in ``dir``)
    storage: str | None = None
    #: the ``--artifact-store`` it was opened with (None: the one its search used)
    artifact_store: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return self.study.user_attrs["slimtune"]

    @property
    def teacher(self) -> dict[str, Any]:
        return self.meta["teacher"]

    @functools.cached_property
    def store(self) -> TrialStore:
        """The artifact store: ``artifact_store`` if given, else the one the search
        recorded, else ``RUN_DIR/artifacts``."""
        url = self.artifact_store
        if url is None and "slimtune" in self.study.user_attrs:
            url = self.meta["config"].get("artifact_store")
        return TrialStore.of(url, self.dir)

    def artifact_path(self, trial_number: int) -> Path:
        """The local file of trial ``trial_number``'s artifact (for ``slimtune.load``): in
        a directory store, its object there; in a run from before the artifact store,
        ``RUN_DIR/trials/trial-NNNNN.slim``. An S3 store has no local file: use
        :meth:`artifact_bytes` or ``slimtune export``."""
        t = self._trial(trial_number)
        artifact_id = t.user_attrs.get(ARTIFACT_ATTR) if t is not None else None
        if artifact_id is None:
            return self._legacy_path(trial_number)
        if self.store.spec.kind != "dir":
            raise RunDirError(f"trial {trial_number}'s artifact is in {self.store.where}, not "
                              "a local file: use Run.artifact_bytes, or `slimtune export`")
        return self.store.spec.directory(self.dir) / str(artifact_id)

    def artifact_bytes(self, trial_number: int) -> bytes:
        """The bytes of completed trial ``trial_number``'s artifact, from wherever it is."""
        t = self._trial(trial_number)
        if t is None:
            raise RunDirError(f"trial {trial_number} is not in {self.dir}")
        return self.artifact(t)[0]

    def _trial(self, number: int) -> optuna.trial.FrozenTrial | None:
        return next((t for t in self.study.get_trials(deepcopy=False) if t.number == number),
                    None)

    def _legacy_path(self, trial_number: int) -> Path:
        return self.dir / "trials" / f"trial-{trial_number:05d}.slim"

    def artifact(self, t: optuna.trial.FrozenTrial) -> tuple[bytes, str]:
        """(the bytes of completed trial ``t``'s artifact, where they were read from: the
        store, or the file of a run from before the store);
        one :class:`RunDirError` naming the trial and the store when it is missing,
        unreadable or not the size the trial recorded."""
        size = t.user_attrs.get("size_bytes")
        size = size if isinstance(size, int) and not isinstance(size, bool) else None
        if ARTIFACT_ATTR in t.user_attrs:
            data = self.store.get(t.user_attrs[ARTIFACT_ATTR], f"trial {t.number}'s artifact",
                                  size)
            return data, self.store.where
        src = self._legacy_path(t.number)  # a run from before the artifact store
        if not src.is_file():
            host = t.user_attrs.get("host", "another machine")
            raise RunDirError(
                f"{src} is missing: trial {t.number} ran on {host}; copy that machine's run "
                "directory `trials` folder here (or share the run directory between machines)")
        if size is not None and src.stat().st_size != size:
            raise RunDirError(f"{src} is {src.stat().st_size:,} bytes, but its trial "
                              f"recorded {size:,}: it is not that trial's artifact")
        return src.read_bytes(), str(src)


def open_run(
    run_dir: str | Path, sampler: optuna.samplers.BaseSampler | None = None,
    storage: str | None = None, study_name: str = STUDY_NAME, *, read_only: bool = True,
    artifact_store: str | None = None,
) -> Run:
    """Open a finished or running slimtune run; :class:`RunDirError` if it is not one.

    ``read_only`` (the default: ``front``, ``export``, the report, reading the settings to
    resume): the study is opened read-only and the run directory is left exactly as it
    was, so a run on a read-only share opens too. Searches write through
    :func:`create_study`. With ``storage``, ``run_dir`` need not exist (another machine
    reads the study and its artifact store).
    """
    d = Path(run_dir)
    if storage is None and not d.is_dir():
        raise RunDirError(f"{d} is not a directory; give the --run-dir of a slimtune search")
    db = d / DB_NAME
    if storage is None and not db.is_file():
        raise RunDirError(f"{d} is not a slimtune run (no {DB_NAME}; if its search used "
                          "--storage, give the same --storage URL); run `slimtune search` first")
    where = str(db) if storage is None else f"--storage {_storage._redact(storage)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(d, storage, read_only=read_only)
    try:
        study = optuna.load_study(study_name=study_name, storage=st, sampler=sampler)
    except KeyError:
        names = sorted(s.study_name for s in st.get_all_studies())
        held = f"it holds {', '.join(f'`{n}`' for n in names)}" if names else "it holds none"
        raise RunDirError(f"{where} holds no study `{study_name}` ({held}): not a slimtune run; "
                          "give the run directory (and --study-name) of a search") from None
    except Exception as exc:  # noqa: BLE001 - a foreign or broken database
        raise RunDirError(f"{where} is not a readable slimtune run: "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    meta = study.user_attrs.get("slimtune")
    if meta is None or (isinstance(meta, dict) and "teacher" not in meta):
        raise RunDirError(f"{d} is not a finished slimtune run (no teacher metrics in its study)")
    check_meta(meta, where)
    return Run(dir=d, study=study, storage=storage, artifact_store=artifact_store)


_NUMBER = (int, float)


def check_meta(meta: Any, where: str) -> None:
    """The shape of a study's ``slimtune`` attribute, as far as ``front``, ``export`` and
    ``--resume`` read it (a crafted study fails here, not with a KeyError later). Only
    shapes: which model and data names may be used is :mod:`slimtune.trust`'s decision."""
    def bad(field: str, want: str) -> RunDirError:
        return RunDirError(f"{where} is not a valid slimtune run: its study's `slimtune` "
                           f"attribute needs {field} {want}; give the run directory of a "
                           "search that slimtune wrote")

    def kind(value: Any, types: tuple[type, ...], optional: bool) -> bool:
        if value is None:
            return optional
        return isinstance(value, types) and not isinstance(value, bool)

    if not isinstance(meta, dict):
        raise bad("to be", "a JSON object")
    cfg, teacher = meta.get("config"), meta.get("teacher")
    if not isinstance(cfg, dict):
        raise bad("`config`", "as an object")
    if not isinstance(teacher, dict):
        raise bad("`teacher`", "as an object")
    for key, types, optional in (("data", (str,), False), ("model", (str,), False),
                                 ("data_dir", (str,), True), ("checkpoint", (str,), True),
                                 ("subset", (int,), True), ("val_subset", (int,), True),
                                 ("artifact_store", (str,), True)):
        if not kind(cfg.get(key), types, optional):
            raise bad(f"`config.{key}`", "as a string" if types == (str,) else "as an integer")
    objectives = cfg.get("objectives", [])
    if not isinstance(objectives, list) or not all(isinstance(o, str) for o in objectives):
        raise bad("`config.objectives`", "as a list of strings")
    for key in ("accuracy", "test_accuracy", "size_bytes", "flops"):
        if not kind(teacher.get(key), _NUMBER, False):
            raise bad(f"`teacher.{key}`", "as a number")
    for key in ("dense_flops", "bitops", "latency_ms"):
        if not kind(teacher.get(key), _NUMBER, True):
            raise bad(f"`teacher.{key}`", "as a number")


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
