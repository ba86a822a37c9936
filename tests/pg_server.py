"""A real, throwaway PostgreSQL server for the tests (Debian's ``postgresql`` package).

``postgres_server()`` runs ``initdb`` in a fresh temporary directory, starts the server on a
free port of 127.0.0.1 (trust authentication, fsync off), creates the database ``slimtune``
and yields its SQLAlchemy URL (``postgresql+psycopg://slimtune@127.0.0.1:PORT/slimtune``).
On exit it stops the server and removes the directory.

PostgreSQL refuses to run as root: when the tests run as root, the server programs run as
the unprivileged ``postgres`` user the Debian package creates, and the temporary directory is
handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "slimtune"  # the database superuser initdb creates (trust authentication)
DATABASE = "slimtune"
RUN_AS = "postgres"  # the system user Debian's postgresql package creates
_PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")


class PostgresServerError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up, started or stopped."""


def _version_key(path: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,); 9.6 -> (9, 6); unparsable -> ()."""
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when PostgreSQL is absent.

    initdb on PATH wins (symlinks resolved, e.g. /usr/local/bin/initdb ->
    /usr/lib/postgresql/15/bin/initdb); otherwise the newest /usr/lib/postgresql/*/bin.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key,
                         reverse=True)
    for d in candidates:
        if all(os.access(d / p, os.X_OK) for p in _PROGRAMS):
            return d
    return None


def _run_as_user() -> pwd.struct_passwd | None:
    """The user the server programs run as: None = this process's user (not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresServerError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"{RUN_AS!r} user to run it as (Debian's postgresql package creates one)") from None


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here, or None when one can."""
    if find_bin_dir() is None:
        return ("PostgreSQL server programs (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin: install Debian's postgresql package")
    try:
        _run_as_user()
    except PostgresServerError as e:
        return str(e)
    return None


def postgres_available() -> bool:
    """Whether ``postgres_server()`` can start a server here (programs and user present)."""
    return unavailable_reason() is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traversable_by_others(path: Path) -> bool:
    """Every directory from / down to path lets other users in (o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no server log: {e})"
    return "\n".join(text[-lines:]) or "(server log is empty)"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh PostgreSQL server; yield its SQLAlchemy URL; stop and delete it on exit."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresServerError(unavailable_reason())
    user = _run_as_user()

    base = Path(tempfile.gettempdir())
    if user is not None and not _traversable_by_others(base):
        base = Path("/tmp")  # the postgres user must reach the directory
    root = Path(tempfile.mkdtemp(prefix="slimtune-pg-", dir=base))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if user is not None:
        for p in (root, sock):
            os.chown(p, user.pw_uid, user.pw_gid)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    if user is not None:
        env.update(HOME=str(root), USER=user.pw_name, LOGNAME=user.pw_name)
    as_user = ({} if user is None else
               dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]))

    def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(bin_dir / str(args[0])), *map(str, args[1:])]
        try:
            done = subprocess.run(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, **as_user)
        except (OSError, subprocess.SubprocessError) as e:
            raise PostgresServerError(f"{shlex.join(cmd)} failed: {e}\n"
                                      f"server log ({log}):\n{_tail(log)}") from e
        if done.returncode != 0:
            who = "" if user is None else f" (as user {user.pw_name})"
            raise PostgresServerError(
                f"{shlex.join(cmd)}{who} exited with {done.returncode}:\n"
                f"{(done.stdout + done.stderr).strip()}\n"
                f"server log ({log}):\n{_tail(log)}")
        return done

    try:
        run("initdb", "-D", data, "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale",
            "--no-sync")
        for attempt in range(3):  # the free port may be taken before the server binds it
            port = _free_port()
            options = (f"-p {port} -k {shlex.quote(str(sock))} "
                       "-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100 "
                       "-c synchronous_commit=off -c full_page_writes=off")
            try:
                run("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", log, "-o", options)
                break
            except PostgresServerError:
                if attempt == 2 or "already in use" not in _tail(log, 200):
                    raise
        run("createdb", "-h", "127.0.0.1", "-p", port, "-U", USER, DATABASE, timeout=60)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        try:
            if (data / "postmaster.pid").exists():  # also after a failed or timed-out start
                try:
                    run("pg_ctl", "stop", "-w", "-t", "60", "-D", data, "-m", "fast")
                except PostgresServerError:
                    run("pg_ctl", "stop", "-w", "-t", "30", "-D", data, "-m", "immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
