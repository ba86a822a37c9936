"""The study file is input from outside: any run-directory name, read-only runs, broken files.

Runs here are built with Optuna directly (through slimtune's own write path, so the file is
a WAL database like a search's), no search is run. Every refusal is a RunDirError naming the
file, and the file and its directory are left byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from slimtune.errors import RunDirError
from slimtune.search.study import (
    DB_NAME,
    STUDY_NAME,
    create_study,
    open_run,
    open_storage,
    storage_url,
)
from slimtune.viz.front import front_info
from tests.hostile import run_cli_many

META = {
    "version": "test",
    "config": {"data": "digits", "model": "small_cnn", "data_dir": None, "subset": None,
               "objectives": ["accuracy", "size", "flops"]},
    "teacher": {"accuracy": 0.9, "test_accuracy": 0.88, "size_bytes": 40_000, "flops": 9_000,
                "dense_flops": 9_000, "bitops": 9_000 * 32 * 32},
    "input_shape": [1, 8, 8],
    "num_classes": 10,
}
NASTY = ["runs with space", "q?x=1", "p%41", "frag#x", "br{ace}s", "ünï©ødé", "a&b=c;d",
         "semi:colon", "new\nline"]


def _tell(study: optuna.Study, acc: float, size: int, flops: int) -> None:
    t = study.ask()
    for k, v in {"val_accuracy": acc, "size_bytes": size, "flops": flops, "plan": {},
                 "status": "complete"}.items():
        t.set_user_attr(k, v)
    study.tell(t, [acc, size, flops])


def _close(study: optuna.Study) -> None:
    """Close the study's connections, as its process's exit would."""
    storage = study._storage  # type: ignore[attr-defined]
    getattr(storage, "_backend", storage).engine.dispose()


def make_run(run_dir: Path, meta: object = META, trials: int = 2,
             close: bool = True) -> optuna.Study:
    """A finished run as a search leaves it: the study written through slimtune's write path
    (WAL SQLite), its metadata and ``trials`` COMPLETE trials; with ``close``, its
    connections closed (the writer's exit: SQLite checkpoints and deletes -wal/-shm)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(run_dir, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", meta)
    for i in range(trials):
        _tell(study, 0.8 - 0.1 * i, 20_000 // (i + 1), 5_000 // (i + 1))
    if close:
        _close(study)
    return study


def snapshot(d: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``d``: size, mtime and content hash."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(d))] = (st.st_size, st.st_mtime_ns,
                                          hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def refused(run_dir: Path, call, *words: str) -> str:  # type: ignore[no-untyped-def]
    """``call()`` raises RunDirError naming RUN_DIR/study.db and ``words``, and leaves
    the run directory exactly as it was. Returns the message."""
    before = snapshot(run_dir)
    with pytest.raises(RunDirError) as info:
        call()
    msg = str(info.value)
    assert str(run_dir / DB_NAME) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "Traceback" not in msg
    assert snapshot(run_dir) == before
    return msg


# -- 1. any path maps to exactly RUN_DIR/study.db ----------------------------------------

@pytest.mark.parametrize("name", NASTY)
def test_any_run_dir_name_is_exactly_its_study_db(tmp_path, name):
    base = tmp_path / "runs"
    run_dir = base / name
    make_run(run_dir)
    assert sorted(os.listdir(base)) == [name]  # nothing written beside it (`runs/q`)
    assert sorted(os.listdir(run_dir)) == [DB_NAME]
    # the URL names that file, whatever the name: SQLAlchemy parses it back to the path
    url = storage_url(run_dir)
    assert "{" not in url and "}" not in url  # Optuna passes the URL through str.format
    u = make_url(url)
    dialect_args = u.get_dialect()().create_connect_args(u)[0][0]
    assert dialect_args.startswith("file://")
    con = sqlite3.connect(dialect_args + "?mode=ro&immutable=1", uri=True)
    try:
        assert con.execute("SELECT count(*) FROM trials").fetchone() == (2,)
    finally:
        con.close()
    # a second open, with slimtune and with plain Optuna, finds the same study
    assert len(open_run(run_dir).study.get_trials()) == 2
    study = optuna.load_study(study_name=STUDY_NAME, storage=url)
    assert study.user_attrs["slimtune"]["config"]["model"] == "small_cnn"
    _close(study)
    again = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    _tell(again, 0.5, 1_000, 100)
    _close(again)
    assert len(open_run(run_dir).study.get_trials()) == 3
    assert sorted(os.listdir(run_dir)) == [DB_NAME] and sorted(os.listdir(base)) == [name]


def test_storage_sqlite_url_of_a_plain_path_reads_read_only_too(tmp_path):
    src = tmp_path / "a run"
    make_run(src)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    before = snapshot(tmp_path)
    run = open_run(elsewhere, storage=f"sqlite:///{src / DB_NAME}")
    assert len(run.study.get_trials()) == 2
    assert snapshot(tmp_path) == before


# -- 2. reads create and change nothing; read-only directories open ----------------------

def test_read_leaves_a_finished_run_exactly_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir)
    (run_dir / "trials").mkdir()
    (run_dir / "search.lock").write_text("")
    before = snapshot(run_dir)
    run = open_run(run_dir)
    info = front_info(run)
    assert [p.trial for p in info.front] == [1, 0] and info.counts["complete"] == 2
    assert info.dataset == "digits" and info.teacher["flops"] == 9_000
    run.study.get_trials()  # reads after the open: still no -shm/-wal
    assert snapshot(run_dir) == before
    del run, info
    assert snapshot(run_dir) == before


def test_read_of_a_run_still_being_written_sees_its_latest_trials(tmp_path):
    """A search holding the study open (its -wal and -shm exist): the read goes through
    them, sees trials not yet checkpointed into study.db, and adds no file."""
    run_dir = tmp_path / "run"
    writer = make_run(run_dir, close=False)
    _tell(writer, 0.3, 500, 50)  # committed, in the -wal
    names = sorted(os.listdir(run_dir))
    assert names == [DB_NAME, DB_NAME + "-shm", DB_NAME + "-wal"]
    run = open_run(run_dir)
    assert len(run.study.get_trials()) == 3
    _tell(writer, 0.2, 400, 40)  # the search goes on; a new read sees it
    assert len(open_run(run_dir).study.get_trials()) == 4
    assert sorted(os.listdir(run_dir)) == names
    _close(writer)
    del run
    assert sorted(os.listdir(run_dir)) == [DB_NAME]


def _killed_copy(tmp_path: Path) -> Path:
    """A run copied while its search was alive (as a SIGKILL leaves it): study.db plus the
    -wal holding its last committed trial and the -shm."""
    live = tmp_path / "live"
    writer = make_run(live, close=False)
    _tell(writer, 0.3, 500, 50)
    copy = tmp_path / "killed"
    shutil.copytree(live, copy)
    _close(writer)
    assert (copy / (DB_NAME + "-wal")).stat().st_size > 0
    return copy


def test_read_of_a_killed_run_sees_the_trials_in_its_wal(tmp_path):
    copy = _killed_copy(tmp_path)
    before = snapshot(copy)
    assert len(open_run(copy).study.get_trials()) == 3
    assert sorted(snapshot(copy)) == sorted(before)  # no file added or removed


_CHILD = textwrap.dedent("""
    import json, os, sys
    from slimtune.search.study import open_run
    from slimtune.viz.front import front_info
    run_dir, how, scratch = sys.argv[1:4]
    if how == "nobody":
        # Python and its libraries may live where nobody cannot read (/root/.pyenv): first
        # open a writable copy of the run, so every module the read needs is imported
        front_info(open_run(scratch))
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        open(os.path.join(run_dir, "probe"), "w")
        writable = True
    except OSError:
        writable = False
    run = open_run(run_dir)
    info = front_info(run)
    print(json.dumps({"writable": writable, "trials": len(run.study.get_trials()),
                      "front": [p.trial for p in info.front]}))
""")


def _read_as(run_dir: Path, how: str, scratch: Path) -> dict[str, object]:
    """open_run + front_info in a child that cannot write to ``run_dir``: ``nobody`` drops
    root's privileges (root ignores permission bits); ``mount`` binds the directory
    read-only onto itself in a private mount namespace (EROFS: a real read-only share)."""
    import json

    cmd = [sys.executable, "-c", _CHILD, str(run_dir), how, str(scratch)]
    if how == "mount":
        q = " ".join(f"'{a}'" for a in cmd[3:])
        script = (f"mount --bind '{run_dir}' '{run_dir}' && "
                  f"mount -o remount,ro,bind '{run_dir}' && exec '{sys.executable}' -c \"$0\" {q}")
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, _CHILD]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["writable"] is False  # the child really could not write there
    return doc


def _can_mount_read_only(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    d = tmp_path / "mount-probe"
    d.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount --bind '{d}' '{d}' && mount -o remount,ro,bind '{d}'"],
                       capture_output=True)
    d.rmdir()
    return r.returncode == 0


def _ro_ways(tmp_path: Path) -> list[str]:
    if os.geteuid() != 0:
        return ["self"]  # not root: chmod alone makes it read-only for this process
    ways = ["nobody"]
    if _can_mount_read_only(tmp_path):
        ways.append("mount")
    return ways


def _read_only_tree(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        p.chmod(0o444)
    run_dir.chmod(0o555)
    # the child running as nobody must reach it (pytest's tmp root is 0700)
    for parent in run_dir.parents:
        if parent == Path(parent.anchor) or os.stat(parent).st_mode & 0o005 == 0o005:
            break
        parent.chmod(os.stat(parent).st_mode | 0o005)


@pytest.fixture
def ro_base():
    """A directory outside pytest's 0700 tmp root, cleaned up writable again."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="slimtune-ro-"))
    base.chmod(0o755)
    yield base
    for p in [base, *base.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(base)


def _check_read_only(run_dir: Path, tmp_path: Path, trials: int) -> list[str]:
    _read_only_tree(run_dir)
    before = snapshot(run_dir)
    ways = _ro_ways(tmp_path)
    for how in ways:
        if how == "self":
            run = open_run(run_dir)
            assert len(run.study.get_trials()) == trials
        else:
            scratch = tmp_path / f"scratch-{how}"
            shutil.copytree(run_dir, scratch)
            doc = _read_as(run_dir, how, scratch)
            assert doc["trials"] == trials and doc["front"], doc
        assert snapshot(run_dir) == before, how
    return ways


def test_finished_run_on_a_read_only_directory_opens(tmp_path, ro_base):
    run_dir = ro_base / "share" / "run"
    make_run(run_dir)
    ways = _check_read_only(run_dir, tmp_path, trials=2)
    assert ways  # which ways ran: see the report in -rA output
    print("read-only checked as:", ways)


def test_killed_run_copied_to_a_read_only_share_opens_with_its_wal(tmp_path, ro_base):
    copy = _killed_copy(tmp_path)
    run_dir = ro_base / "killed"
    shutil.copytree(copy, run_dir)
    ways = _check_read_only(run_dir, tmp_path, trials=3)
    print("read-only checked as:", ways)


# -- 3. broken study files: one RunDirError, untouched ------------------------------------

def _sqlite_without_optuna(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
    con.execute("INSERT INTO photos VALUES (1, 'cat')")
    con.commit()
    con.close()


def _half_optuna(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE studies (study_id INTEGER)")
    con.commit()
    con.close()


def _corrupt_body(db: Path) -> None:
    """A real study whose pages after the header are overwritten: SQLite's header, but
    no readable database behind it."""
    make_run(db.parent)
    raw = bytearray(db.read_bytes())
    raw[100:] = os.urandom(len(raw) - 100)
    db.write_bytes(bytes(raw))


def _damaged_page(db: Path) -> None:
    """A real study of many trials with one page in the middle overwritten: the header and
    the schema read fine, the trials do not (SQLite's quick_check finds it)."""
    make_run(db.parent, trials=60)
    raw = bytearray(db.read_bytes())
    assert len(raw) > 8 * 4096
    raw[5 * 4096:6 * 4096] = os.urandom(4096)
    db.write_bytes(bytes(raw))


def _other_study(db: Path) -> None:
    """Optuna's tables, but studies of other names (closed: a finished file)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _close(optuna.create_study(study_name="someone-else", storage=storage_url(db.parent)))
    _close(optuna.create_study(study_name="another", storage=open_storage(db.parent)))


BROKEN = {
    "empty": (lambda db: db.write_bytes(b""), "is empty: not a slimtune run"),
    "random": (lambda db: db.write_bytes(os.urandom(4096)), "is not a SQLite database"),
    "text": (lambda db: db.write_text("hello\nthis is not a database\n"),
             "is not a SQLite database"),
    "foreign-sqlite": (_sqlite_without_optuna, "without Optuna's tables"),
    "half-optuna": (_half_optuna, "lacking Optuna's tables alembic_version, trials"),
    "corrupt": (_corrupt_body, "is not a readable Optuna study"),
    "damaged-page": (_damaged_page, "is not a readable Optuna study"),
    "no-slimtune-study": (_other_study, "holds no study `slimtune`"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_study_file_is_refused_untouched(tmp_path, case):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    db = run_dir / DB_NAME
    make_bad, words = BROKEN[case]
    make_bad(db)
    msg = refused(run_dir, lambda: open_run(run_dir), words)
    if case == "no-slimtune-study":
        assert "`another`, `someone-else`" in msg
    if case == "empty":
        assert db.stat().st_size == 0


@pytest.mark.parametrize("case", ["random", "text", "foreign-sqlite", "corrupt",
                                  "damaged-page"])
def test_new_search_on_a_broken_study_file_is_refused_untouched(tmp_path, case):
    """The write path (a new search checks the directory with ``open_storage``)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    make_bad, _ = BROKEN[case]
    make_bad(run_dir / DB_NAME)
    msg = refused(run_dir, lambda: open_storage(run_dir))
    assert "move it away or choose another --run-dir" in msg


def test_new_search_fills_an_empty_study_file(tmp_path):
    """0 bytes on the write path: a search that died before it began; the new one uses it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / DB_NAME).write_bytes(b"")
    storage = open_storage(run_dir)
    assert storage.get_all_studies() == []


def test_cli_front_on_a_broken_study_is_one_line(tmp_path):
    cases = ["empty", "random", "no-slimtune-study"]
    for case in cases:
        (tmp_path / case).mkdir()
        BROKEN[case][0](tmp_path / case / DB_NAME)
    crafted = tmp_path / "crafted"
    make_run(crafted, meta=_with(teacher__size_bytes="big"))
    before = {d: snapshot(tmp_path / d) for d in [*cases, "crafted"]}
    # one child process for all four (one start of Python and torch)
    results = run_cli_many([["front", str(tmp_path / d)] for d in [*cases, "crafted"]],
                           tmp_path)
    for r in results[:-1]:
        r.assert_refused("study.db")
    results[-1].assert_refused("study.db", "teacher.size_bytes")
    assert {d: snapshot(tmp_path / d) for d in [*cases, "crafted"]} == before


# -- 4. malformed `slimtune` metadata ------------------------------------------------------

def _with(**changes: object) -> dict[str, object]:
    meta = {**META, "config": dict(META["config"]), "teacher": dict(META["teacher"])}
    for path, value in changes.items():
        where, _, key = path.partition("__")
        if key:
            if value is KeyError:
                del meta[where][key]  # type: ignore[attr-defined]
            else:
                meta[where][key] = value  # type: ignore[index]
        else:
            meta[where] = value
    return meta


MALFORMED = {
    "a string": ("just a teacher string", "a JSON object"),
    "a number": (42, "a JSON object"),
    "config a list": (_with(config=["digits"]), "`config`"),
    "teacher a string": (_with(teacher="teacher"), "`teacher`"),
    "no config": ({"teacher": META["teacher"]}, "`config`"),
    "no data": (_with(config__data=KeyError), "`config.data`"),
    "model a number": (_with(config__model=3), "`config.model`"),
    "data_dir a list": (_with(config__data_dir=["/etc"]), "`config.data_dir`"),
    "subset a string": (_with(config__subset="all"), "`config.subset`"),
    "objectives a string": (_with(config__objectives="accuracy"), "`config.objectives`"),
    "no flops": (_with(teacher__flops=KeyError), "`teacher.flops`"),
    "size a string": (_with(teacher__size_bytes="40 kB"), "`teacher.size_bytes`"),
    "accuracy a bool": (_with(teacher__accuracy=True), "`teacher.accuracy`"),
    "test accuracy null": (_with(teacher__test_accuracy=None), "`teacher.test_accuracy`"),
    "bitops a dict": (_with(teacher__bitops={"x": 1}), "`teacher.bitops`"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_is_refused(tmp_path, case):
    run_dir = tmp_path / "run"
    meta, words = MALFORMED[case]
    make_run(run_dir, meta=meta)
    refused(run_dir, lambda: open_run(run_dir), words)


def test_no_teacher_is_not_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, meta={"config": META["config"]})
    before = snapshot(run_dir)
    with pytest.raises(RunDirError, match="not a finished slimtune run"):
        open_run(run_dir)
    assert snapshot(run_dir) == before


def test_reading_a_run_in_its_searchs_process_keeps_the_searchs_sqlite_locks(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it: a
    run read in the process of its own search (the report at its end) must not drop the
    search's, or another process closing its connection believes it is the last and
    deletes the search's ``-wal`` under it (a fine-tune's record was lost that way)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="slimtune", storage=open_storage(tmp_path))
    study.set_user_attr("trials", 1)  # the search's connection: open, in WAL mode
    open_storage(tmp_path, read_only=True)  # a reader in the same process
    other = ("import sqlite3; c = sqlite3.connect('study.db'); c.execute('create table x(y)');"
             " c.commit(); c.close()")
    subprocess.run([sys.executable, "-c", other], cwd=tmp_path, check=True)
    assert (tmp_path / "study.db-wal").exists()  # the other process knew it was not last
    study.set_user_attr("trials", 2)
    assert optuna.load_study(study_name="slimtune", storage=open_storage(
        tmp_path, read_only=True)).user_attrs["trials"] == 2
