"""Opening the Optuna storage of a run: ``RUN_DIR/study.db`` (SQLite) or a ``--storage`` URL.

A study file is data from outside (a copied run, a results share, a file someone made), so
it is checked before Optuna or SQLAlchemy touch it, and every way it can be wrong is one
:class:`RunDirError` that names the file and says what to do:

- the SQLite URL is built from the path, never pasted together: any name (spaces, ``?``,
  ``%``, ``#``, braces, unicode) maps to exactly that file;
- reads (``front``, ``export``, the report) open it read-only and leave the directory as
  they found it: no schema written into an empty file, no version row, no ``-shm``/``-wal``
  files left behind, and a run on a read-only directory or mount opens too;
- a file that is empty, not SQLite, not an Optuna study, or unreadable is refused before
  anything writes to it, on the write path (a new search) as well.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

import optuna

from slimtune.errors import RunDirError

__all__ = ["DB_NAME", "storage_url", "open_storage"]

DB_NAME = "study.db"

#: tables every Optuna RDB study has (a database without them is not one); the rest of the
#: schema is Optuna's own version check's business (it says how to upgrade an old one)
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})


def storage_url(run_dir: Path, *, read_only: bool = False) -> str:
    """The SQLAlchemy URL of ``RUN_DIR/study.db`` (read-write, or read-only as the read
    commands open it), usable with plain Optuna: ``optuna.load_study(storage=...)``."""
    db = Path(run_dir) / DB_NAME
    return _sqlalchemy_url(db, _read_params(db) if read_only else {})


def _sqlite_uri(db: Path, params: dict[str, str]) -> str:
    """A SQLite URI filename (https://sqlite.org/uri.html) for exactly the file ``db``: the
    path is percent-quoted, so ``?``, ``#`` and ``%`` in it are never a query, a fragment or
    an escape, and ``file://`` + an absolute path leaves the authority empty."""
    uri = "file://" + quote(str(Path(db).resolve()))
    return uri + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def _sqlalchemy_url(db: Path, params: dict[str, str]) -> str:
    """``sqlite:///file:...?uri=true``: SQLAlchemy unquotes the database part of its URL
    once (so the SQLite URI is quoted once more here) and hands the remaining query
    parameters to SQLite as URI parameters. The result has no ``{``/``}`` either (Optuna
    passes the URL through ``str.format``)."""
    plain = quote(_sqlite_uri(db, {}), safe="/:")
    return f"sqlite:///{plain}?" + "&".join([*(f"{k}={v}" for k, v in params.items()),
                                              "uri=true"])


def _read_params(db: Path) -> dict[str, str]:
    """SQLite URI parameters to read ``db`` without creating or changing any file.

    ``mode=ro`` alone is not enough: a reader of a WAL database (every search's) creates
    ``study.db-shm`` and ``study.db-wal`` beside it and leaves them there, and cannot open
    at all where it may not create them (a read-only directory or mount). So a study with
    no ``-wal``/``-journal`` beside it is read as ``immutable=1``: no locks, no side files.
    That is exact for a finished run (its writer closed, checkpointing everything into the
    file and deleting the ``-wal``), and a reader never writes, so it cannot harm a run
    either; what it cannot see are changes made by a search that starts while it reads (a
    command started again sees them). With a ``-wal`` beside it (a search still writing,
    or one killed before it could checkpoint) the WAL holds committed trials the file does
    not, so it is read with plain ``mode=ro``, which reads them through the ``-wal`` and
    ``-shm`` files that are already there (where even that cannot open, a read-only copy
    whose ``-shm`` is unusable, :func:`_probe` falls back to ``immutable=1``: the file
    alone, without the trials only in its ``-wal``).
    """
    real = Path(db).resolve()  # SQLite keeps its side files beside the real file
    if any(real.with_name(real.name + s).exists() for s in ("-wal", "-journal")):
        return {"mode": "ro"}
    return {"mode": "ro", "immutable": "1"}


def open_storage(
    run_dir: Path, url: str | None = None, *, read_only: bool = False,
    heartbeat_interval: int | None = None, grace_period: int | None = None,
) -> optuna.storages.BaseStorage:
    """SQLite in ``run_dir`` (one driver), or the shared database at ``url`` (drivers on
    many machines; their running trials send heartbeats, every ``heartbeat_interval``
    seconds, so a dead one's can be retried after ``grace_period``).

    ``read_only``: for reading a run; creates no file, table or row, and refuses (one
    :class:`RunDirError`) a study file that is empty, foreign or broken. Otherwise (a
    search) a missing or empty ``study.db`` gets Optuna's schema, and an existing file that
    is not an Optuna study is refused before anything is written to it.
    """
    if url is not None and url.startswith("sqlite:"):
        db = _plain_sqlite_path(url)
        if db is None:  # the caller's own SQLite URL (URI options, memory): used as given
            return _checked(url, _redact(url), read_only, sqlite=True)
    elif url is not None:
        return _checked(url, _redact(url), read_only, sqlite=False,
                        heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    else:
        db = Path(run_dir) / DB_NAME
    if read_only:
        params = _probe(db, read_only=True)
        return _checked(_sqlalchemy_url(db, params), str(db), True, sqlite=True)
    if db.exists():
        _probe(db, read_only=False)
    elif not db.parent.is_dir():
        raise RunDirError(f"cannot create {db}: {db.parent} is not a directory")
    return _checked(_sqlalchemy_url(db, {}), str(db), False, sqlite=True)


def _plain_sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL (opened then like ``RUN_DIR/study.db``);
    None for one with options or in memory."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise RunDirError(f"--storage {_redact(url)} is not a database URL ({exc}); give "
                          "one like sqlite:///path/study.db or postgresql+psycopg://...") from None
    if u.query or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return None
    return Path(u.database)


def _probe(db: Path, read_only: bool) -> dict[str, str]:
    """Check ``db`` with SQLite itself, read-only, before Optuna opens it; return the URI
    parameters to read it with. Raises :class:`RunDirError` for an empty file (reads
    only: a search fills it), a file that is not SQLite, a broken one, or a database with
    tables that are not an Optuna study's."""
    what = ("give the run directory of a slimtune search" if read_only
            else "move it away or choose another --run-dir")
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        raise RunDirError(f"{db} does not exist: not a slimtune run; give the run directory "
                          "(or the --storage URL) of a search") from None
    except OSError as exc:
        raise RunDirError(f"{db} cannot be read ({exc.strerror or exc}); check its "
                          "permissions, or choose another --run-dir") from None
    if not os.access(db, os.R_OK):
        raise RunDirError(f"{db} cannot be read (permission denied); check its "
                          "permissions, or choose another --run-dir")
    if size == 0:
        if read_only:
            raise RunDirError(f"{db} is empty: not a slimtune run (a search that died before "
                              "it began?); run `slimtune search` on it, or give the run "
                              "directory of a finished search")
        return {}
    if not _has_sqlite_header(db):
        raise RunDirError(f"{db} is not a SQLite database (it does not begin with SQLite's "
                          f"header): not a slimtune run; {what}")
    params = _read_params(db)
    try:
        tables = _tables(db, params)
    except sqlite3.Error as exc:
        if params.get("immutable") or os.access(db.parent, os.W_OK):
            raise _unreadable(db, exc, read_only) from None
        # a read-only directory whose -wal/-shm cannot be opened: the file alone, without
        # the transactions still in its -wal (copy the run with the search stopped)
        params = {"mode": "ro", "immutable": "1"}
        try:
            tables = _tables(db, params)
        except sqlite3.Error as exc2:
            raise _unreadable(db, exc2, read_only) from None
    if not _OPTUNA_TABLES <= tables and (read_only or tables):
        kind = "without Optuna's tables" if not tables & _OPTUNA_TABLES else \
            f"lacking Optuna's tables {', '.join(sorted(_OPTUNA_TABLES - tables))}"
        raise RunDirError(f"{db} is a SQLite database {kind}: not a slimtune run; {what}")
    return params


def _has_sqlite_header(db: Path) -> bool:
    """Whether ``db`` begins with SQLite's header, read by SQLite itself.

    Never with Python's ``open``: closing any file descriptor of a file drops every POSIX
    lock the process holds on it, so reading a run in the process of its own search (the
    report at its end, ``slimtune.front`` after ``slimtune.search``) would drop the
    search's lock; another process closing its connection then believes it is the last,
    checkpoints and deletes the ``-wal`` under the search, whose later checkpoint writes
    stale pages back (a fine-tune's record was lost that way; SQLite's "How To Corrupt An
    SQLite Database File", 2.2). SQLite's own file layer keeps such descriptors open."""
    con = sqlite3.connect(_sqlite_uri(db, {"mode": "ro", "immutable": "1"}), uri=True)
    try:
        con.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.DatabaseError as exc:  # anything else: _tables says what is wrong
        return "not a database" not in str(exc)
    finally:
        con.close()


def _tables(db: Path, params: dict[str, str]) -> set[str]:
    """The tables of ``db``, read-only, after SQLite's ``quick_check`` of every page (a
    damaged trial page would otherwise fail later, in the middle of ``front``; it reads
    the whole file once: milliseconds for a study of thousands of trials)."""
    con = sqlite3.connect(_sqlite_uri(db, {**params, "mode": "ro"}), uri=True, timeout=60)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        check = con.execute("PRAGMA quick_check(1)").fetchone()
        if not check or check[0] != "ok":
            raise sqlite3.DatabaseError(f"damaged: {check[0] if check else 'no answer'}")
        return {r[0] for r in rows}
    finally:
        con.close()


def _unreadable(db: Path | str, exc: BaseException, read_only: bool) -> RunDirError:
    for _ in range(4):  # down to the driver's own error (SQLAlchemy's wraps it)
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    msg = _one_line(exc) or type(exc).__name__
    what = ("restore it from a copy, or give the run directory of another search"
            if read_only else "move it away or choose another --run-dir")
    return RunDirError(f"{db} is not a readable Optuna study ({msg}): {what}")


def _checked(
    url: str, shown: str, read_only: bool, *, sqlite: bool,
    heartbeat_interval: int | None = None, grace_period: int | None = None,
) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage at ``url``, opened and queried once here: SQLAlchemy connects
    lazily, so a broken database would otherwise fail at its first use, deep inside."""
    try:
        storage = _rdb(url, read_only, sqlite, heartbeat_interval, grace_period)
        storage.get_all_studies()
        return storage
    except RunDirError:
        raise
    except ImportError as exc:  # a missing driver (psycopg, pymysql)
        raise RunDirError(f"cannot open --storage {shown}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/Optuna errors, a refused connection
        if not sqlite:
            raise RunDirError(f"cannot open --storage {shown}: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None
        raise _unreadable(shown, exc, read_only) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _rdb(url: str, read_only: bool, sqlite: bool, heartbeat_interval: int | None,
         grace_period: int | None) -> optuna.storages.RDBStorage:
    if not sqlite:
        if read_only:  # no tables created; reading needs no heartbeat
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                              skip_table_creation=True)
        import warnings

        with warnings.catch_warnings():  # heartbeats: Optuna marks the argument experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                engine_kwargs={"pool_pre_ping": True},
            )
    if read_only:
        from sqlalchemy.pool import NullPool

        # read-only: no tables created (Optuna's version row and alembic stamp are written
        # only where missing, and _probe has checked they are not); NullPool closes each
        # connection when Optuna's session ends, so none stays open between reads
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"poolclass": NullPool, "connect_args": {"timeout": 60}},
            skip_table_creation=True,
        )
    return _sqlite_storage(url)


def _sqlite_storage(url: str) -> optuna.storages.RDBStorage:
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


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<the given URL>"

