"""Running slimtune on hostile input in a child process: exit code, output, peak memory.

Each run goes through a small wrapper process whose only child is the command, so
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the wrapper is the command's own peak
resident memory (the test process's figure would be the largest of every child so far,
and a child forked straight from a large test process starts with its parent's figure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: the most resident memory a refusal may take (the issue's bound)
PEAK_LIMIT_MB = 1536

_WRAPPER = r"""
import json, resource, subprocess, sys
out = sys.argv[1]
r = subprocess.run(sys.argv[2:], capture_output=True, text=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
with open(out, "w") as f:
    json.dump({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
               "peak_mb": peak_kb / 1024}, f)
"""


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    peak_mb: float

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def assert_refused(self, *words: str, after_progress: bool = False) -> str:
        """Exit 2, one ``slimtune: error:`` line on stderr mentioning ``words``, no
        traceback, within the memory bound. Returns the line. ``after_progress``: the
        command had begun its work (a search), so progress lines may come before it."""
        assert self.rc == 2, (self.rc, self.stdout, self.stderr)
        assert len(self.lines) == 1 or after_progress, self.stderr
        assert [ln for ln in self.lines if "slimtune: error:" in ln] == self.lines[-1:]
        line = self.lines[-1]
        assert line.startswith("slimtune: error: "), line
        assert "Traceback" not in self.stderr
        for w in words:
            assert w in line, (w, line)
        assert self.peak_mb < PEAK_LIMIT_MB, self.peak_mb
        return line


def run_python(code: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None,
               args: list[str] | None = None) -> Result:
    """Run ``python -c code ARGS`` in ``cwd`` through the measuring wrapper."""
    return _run([sys.executable, "-c", code, *(args or [])], cwd, timeout, env)


def run_cli(args: list[str], cwd: Path, timeout: float = 300,
            env: dict[str, str] | None = None) -> Result:
    """Run ``slimtune ARGS`` in ``cwd`` through the measuring wrapper."""
    code = "import sys; from slimtune.cli import main; main(sys.argv[1:])"
    return _run([sys.executable, "-c", code, *args], cwd, timeout, env)


_MANY = r"""
import contextlib, io, json, resource, sys
from slimtune.cli import main

def _hwm_kb():
    # VmHWM: this process's peak resident memory since its exec. Not ru_maxrss, which
    # Linux carries over from the parent at fork and keeps across exec: the child of a
    # 2 GB pytest process would report 2 GB before doing anything.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

out, runs = sys.argv[1], json.loads(sys.argv[2])
results = []
for args in runs:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(args)
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # a traceback: report it as the CLI would show it
            import traceback
            traceback.print_exc(file=stderr)
            rc = 1
    peak_kb = _hwm_kb()  # so far: an upper bound of this run's own peak
    results.append({"rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                    "peak_mb": peak_kb / 1024})
with open(out, "w") as f:
    json.dump(results, f)
"""


def run_cli_many(runs: list[list[str]], cwd: Path, timeout: float = 600) -> list[Result]:
    """``slimtune ARGS`` for each of ``runs``, one after the other in one child process
    (one start of Python and torch instead of one each). Each result's ``peak_mb`` is the
    process's peak so far: an upper bound of that run's own peak."""
    report = Path(cwd) / ".hostile-many.json"
    subprocess.run([sys.executable, "-c", _MANY, str(report), json.dumps(runs)], cwd=cwd,
                   timeout=timeout, check=True)
    docs = json.loads(report.read_text())
    report.unlink()
    return [Result(**d) for d in docs]


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None) -> Result:
    report = Path(cwd) / ".hostile-report.json"
    full_env = {**os.environ, **(env or {})}
    # the child must not find the test's own modules by accident: only what is installed
    # (a marker module in cwd is found only if Python would find it there anyway)
    subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *cmd], cwd=cwd,
                   timeout=timeout, env=full_env, check=True)
    doc = json.loads(report.read_text())
    report.unlink()
    return Result(**doc)
