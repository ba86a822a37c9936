"""Command line: argument parsing and printing only; each command is one library call.

The `slimtune` group and what the commands share are in `common.py`; `search` (its options
and live progress) in `search.py`; the commands that read a run (`front`, `report`,
`export`, `finetune`) in `runs.py`; `space`, `eval` and `train` in `models.py`. `main`
turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import sys

import click

from slimtune.cli import models, runs, search  # noqa: F401  (each registers its commands)
from slimtune.cli.common import _storage_args, cli
from slimtune.errors import SlimtuneError

__all__ = ["cli", "main", "_storage_args"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        code = cli.main(args=argv, prog_name="slimtune", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see `slimtune {exc.ctx.info_name} --help`)" if exc.ctx and exc.ctx.parent else ""
        print(f"slimtune: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("slimtune: aborted", file=sys.stderr)
        sys.exit(130)
    except SlimtuneError as exc:
        print(f"slimtune: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a full disk, a file in the way, no permission
        where = f" {exc.filename}" if exc.filename else ""
        print(f"slimtune: error: cannot read or write{where}: {exc.strerror or exc}",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)

