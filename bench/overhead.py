"""Per-trial overhead of the search engine: trials whose work is empty.

Runs, in one process and one Ray cluster, (1) slimtune's real search path (ask, plan,
Ray task with 1 CPU, tell into the SQLite study, user attributes, hypervolume, progress
callback) with a trial function that returns at once, and (2) the plain baseline: an
ask/tell loop over `@ray.remote(num_cpus=1)` tasks into a SQLite study. Both run N trials,
2 at a time. Prints one JSON line; the ratio is the figure to compare across machines.

    .venv/bin/python bench/overhead.py [--trials 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import ray

from slimtune.search import SearchConfig, SearchEvents
from slimtune.search.engine import search


def null_trial(spec, teacher_state):  # the trial's work, made empty
    layers = list(spec.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    return {"accuracy": 1.0 - 0.5 * s, "size_bytes": int(5000 * (1 - s) * bits) + 1,
            "flops": int(600_000 * (1 - s)) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": b"", "seconds": 0.0}


def slimtune_path(run_dir: Path, trials: int) -> float:
    """Seconds from the first trial submitted to the last one told."""
    marks: dict[str, float] = {}
    events = SearchEvents(started=lambda n, c: marks.setdefault("t0", time.perf_counter()),
                          trial_done=lambda t, c: marks.__setitem__("t1", time.perf_counter()))
    config = SearchConfig(trials=trials, run_dir=run_dir, warm_start=False, cpus_per_trial=1)
    search(config, events, trial_fn=null_trial)
    return marks["t1"] - marks["t0"]


def baseline(db: Path, trials: int) -> float:
    @ray.remote(num_cpus=1)
    def work(params):
        return [params["x"], params["y"]]

    study = optuna.create_study(storage=f"sqlite:///{db}", directions=["minimize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=0))
    t0 = time.perf_counter()
    pending, started = {}, 0
    while started < trials or pending:
        while started < trials and len(pending) < 2:
            trial = study.ask()
            params = {"x": trial.suggest_float("x", 0, 1), "y": trial.suggest_float("y", 0, 1)}
            pending[work.remote(params)] = trial
            started += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            study.tell(pending.pop(ref), ray.get(ref))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level=logging.ERROR)
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: worker processes start, the digits teacher trains once (not timed)
        slimtune_path(Path(tmp) / "warm", 4)
        for i in range(args.repeats):
            ours.append(slimtune_path(Path(tmp) / f"run{i}", args.trials))
            base.append(baseline(Path(tmp) / f"base{i}.db", args.trials))
    ray.shutdown()
    ms = lambda xs: [round(1000 * x / args.trials, 1) for x in xs]  # noqa: E731
    print(json.dumps({
        "trials": args.trials, "concurrent": 2, "repeats": args.repeats,
        "slimtune_ms_per_trial": ms(ours), "baseline_ms_per_trial": ms(base),
        "median_ratio": round(statistics.median(ours) / statistics.median(base), 2),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "optuna": optuna.__version__, "ray": ray.__version__,
    }))


if __name__ == "__main__":
    main()
