"""Writing output files so that a failure never leaves half a file behind.

Every file slimtune writes (artifacts, model cards, ONNX, teachers, the HTML report) goes
through :func:`write_atomic`: the bytes go to a temporary file in the same directory,
which is renamed over the target at the end and removed if anything fails (a full disk,
a directory in the way). Errors become :class:`OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from slimtune.errors import OutputError

__all__ = ["write_atomic", "atomic_path", "write_into", "check_output_path",
           "existing_ancestor"]


def existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (what creating it would write
    into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(path: Path, what: str) -> None:
    """Refuse an output path that cannot be a file: a directory, or under a file."""
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file path")
    parent = existing_ancestor(path.parent)
    if not parent.is_dir():
        raise OutputError(f"{what} {path} is under {parent}, which is a file, not a directory")


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "output") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block
    ends without error, removed otherwise. Write to it with :func:`write_into`, which
    names ``path`` (not the temporary file) when the disk is full."""
    path = Path(path)
    check_output_path(path, what)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))  # umask applies
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_into(tmp: Path, data: bytes | str, what: str, path: Path,
               writer: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` (or call ``writer(tmp)``) to the temporary file of ``path``."""
    try:
        if writer is not None:
            writer(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def write_atomic(path: str | Path, data: bytes | str, what: str = "output",
                 writer: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` (or call ``writer(tmp_path)``) to ``path`` atomically."""
    with atomic_path(path, what) as tmp:
        write_into(tmp, data, what, Path(path), writer)
