"""Several drivers on one shared study (``--storage postgresql://...``, from many machines
or processes): which one begins it, the lock around the steps that must not interleave,
and a sampler seed of its own for each.

- **Who begins the study.** Optuna refuses a second study of the same name (the database's
  unique key on the name): the driver whose ``create_study`` makes the study begins it
  (trains or loads the teacher, runs the sensitivity pass, enqueues the warm start); every
  other driver waits until it has (:func:`wait_until_begun`) and then joins. The warm
  start is run once, not once per driver: its trials are WAITING in the study and each is
  popped by exactly one driver (Optuna sets WAITING -> RUNNING under a row lock).
- **The budget.** Counting the trials that count and asking for a new one happen under
  :func:`study_lock` (a PostgreSQL advisory lock, MySQL's ``GET_LOCK``), so two drivers
  near the end cannot both see room for one more trial; it also keeps Optuna from giving
  two concurrent asks the same trial number (it numbers a trial by counting those before
  it, in the same transaction).
- **Seeds.** Each driver records itself in the study (``drivers``: host, pid, start) under
  the lock and seeds its sampler with its index there: drivers of one seed would
  otherwise propose the same plans from the same study.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from slimtune.search.optuna_internals import _rdb_backend

__all__ = ["study_lock", "wait_until_begun", "join_as_driver", "create_or_join",
           "waiting_message", "BEGUN_ATTR", "DRIVERS_ATTR", "QUEUED_ATTR"]

#: study user attribute: the driver that created the study ({host, pid, time})
BEGUN_ATTR = "begun_by"
#: study user attribute: set once the warm start is enqueued (joining drivers wait for it)
QUEUED_ATTR = "warm_start_queued"
#: study user attribute: every driver that has run on the study, in order
DRIVERS_ATTR = "drivers"
#: seconds between looks at a study another driver is beginning
POLL_SECONDS = 1.0


def _lock_key(study: optuna.Study) -> int:
    """A 63-bit key for the study's advisory lock (its storage id and name)."""
    digest = hashlib.sha1(f"slimtune:{study.study_name}:{study._study_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@contextlib.contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study's lock across drivers for the block (PostgreSQL and MySQL; other
    storages have one driver, and the block runs unlocked)."""
    backend = _rdb_backend(study)
    dialect = backend.engine.dialect.name if backend is not None else ""
    if dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    from sqlalchemy import text

    key = _lock_key(study)
    with backend.engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        else:
            name = f"slimtune-{key:x}"[:64]
            conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": name})
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})


def me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": round(time.time(), 3)}


def wait_until_begun(study: optuna.Study, waiting: Callable[[dict[str, Any]], None] | None
                     ) -> dict[str, Any]:
    """The study's ``slimtune`` metadata, once the driver that created it has begun it
    (its teacher measured and its warm start enqueued). ``waiting(begun_by)`` is called
    once when there is something to wait for. Interrupt with Ctrl-C."""
    told = False
    while True:
        attrs = study.user_attrs
        meta = attrs.get("slimtune")
        # a study begun before drivers recorded themselves has its warm start queued
        if meta is not None and (attrs.get(QUEUED_ATTR) or BEGUN_ATTR not in attrs):
            return meta
        if not told and waiting is not None:
            waiting(attrs.get(BEGUN_ATTR) or {})
            told = True
        time.sleep(POLL_SECONDS)


def join_as_driver(study: optuna.Study) -> int:
    """Record this driver in the study; its index among the study's drivers (0: the
    first), which seeds its sampler."""
    with study_lock(study):
        drivers = list(study.user_attrs.get(DRIVERS_ATTR) or [])
        drivers.append(me())
        study.set_user_attr(DRIVERS_ATTR, drivers)
    return len(drivers) - 1


def create_or_join(make: Callable[[bool], optuna.Study]) -> tuple[optuna.Study, bool]:
    """(the study, whether this call created it): ``make(load_if_exists)``."""
    try:
        return make(False), True
    except optuna.exceptions.DuplicatedStudyError:
        return make(True), False


def waiting_message(begun: dict[str, Any], study_name: str) -> str:
    who = (f"pid {begun.get('pid')} on {begun.get('host')}" if begun
           else "the driver that created it")
    return (f"waiting for {who} to begin the study `{study_name}` (its teacher and warm "
            "start); if that driver died before it could, delete the study "
            f"(optuna delete-study --storage URL --study-name {study_name}) and start again")
