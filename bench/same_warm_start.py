"""Does this checkout give the same warm start as another commit? (issue 11's check)

Runs the README's default search (digits, small_cnn, seed 0) with ``--trials N`` in both
code bases, one after the other, each in its own run directory (the cached teacher is the
same file for both), and compares the first N trials: the uniform warm start and the
sensitivity-guided plans. Prints one JSON line: per trial whether the plan and the size
are identical, and the difference of validation accuracy.

    git worktree add --detach /tmp/slimtune-base d504782
    .venv/bin/python bench/same_warm_start.py --base /tmp/slimtune-base [--trials 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna


def run(src: Path, run_dir: Path, trials: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    cmd = [sys.executable, "-m", "slimtune.cli", "search", "--trials", str(trials),
           "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{src}: the search failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{run_dir}/study.db")
    return [{"plan": t.user_attrs.get("plan"), "size": t.user_attrs.get("size_bytes"),
             "acc": t.user_attrs.get("val_accuracy"), "state": t.state.name}
            for t in sorted(study.trials, key=lambda t: t.number)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=16)
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        base = run(args.base, Path(tmp) / "base", args.trials)
        this = run(here, Path(tmp) / "this", args.trials)
    rows = [{"trial": i, "same_plan": a["plan"] == b["plan"], "same_size": a["size"] == b["size"],
             "acc_diff": None if a["acc"] is None or b["acc"] is None else b["acc"] - a["acc"]}
            for i, (a, b) in enumerate(zip(base, this, strict=True))]
    diffs = [abs(r["acc_diff"]) for r in rows if r["acc_diff"] is not None]
    print(json.dumps({"trials": len(rows), "all_same_plans": all(r["same_plan"] for r in rows),
                      "all_same_sizes": all(r["same_size"] for r in rows),
                      "max_abs_acc_diff": max(diffs) if diffs else None, "rows": rows}))


if __name__ == "__main__":
    main()
