"""The run directory seen by a starting search: its lock (one driver at a time), the
refusal of a second search in it, and the check that a resumed or joined search keeps the
stored settings."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna

from slimtune.errors import ConfigError, RunDirError
from slimtune.search.config import SearchConfig


def _check_settings(run_dir: Path, config: SearchConfig, meta: dict[str, Any]) -> None:
    old = meta["config"]
    for key in ("data", "model", "pruning", "knobs", "subset", "val_subset", "fidelity",
                "rungs", "eta", "space", "artifact_store"):
        # a run from before a setting existed searched as its default does now
        before = old.get(key, False if key == "fidelity" else getattr(SearchConfig, key, None))
        before = tuple(before) if isinstance(before, list) else before
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
