"""Does the search beat random search and compressing every layer alike?

Three arms, each a full slimtune search with the same trial budget, the same trial
function (compress, distil for --epochs, export, measure) and the same teacher:

  search   the default: NSGA-II, warm start (uniform plans first), early stopping
  random   Optuna's RandomSampler over the same space, no warm start, no early stopping
  uniform  a grid of uniform plans (every layer at the same sparsity, bits and channel
           keep ratio; no factorization; T=4, alpha=0.7), no early stopping

For each arm it reports the hypervolume of the front in the normalized space (size / teacher,
FLOPs / teacher, 1 - accuracy; reference (1, 1, 1)) with the validation accuracy the search
saw, and again with every trial's accuracy re-measured on the held-out test split from its
exported file; plus the trial epochs early stopping saved and the wall time.

    .venv/bin/python bench/hypervolume.py [--model vgg_small --data fashion-mnist
        --subset 2000 --trials 24 --epochs 3] [--out bench/results/hypervolume.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna

from slimtune.data.datasets import load_dataset
from slimtune.export.artifact import load
from slimtune.objectives.accuracy import accuracy
from slimtune.search import SearchConfig
from slimtune.search.engine import search
from slimtune.search.pareto import FrontPoint, hypervolume
from slimtune.spaces.plan import CompressionPlan


def uniform_grid(n: int):
    """``n`` uniform plans over sparsity x bits x keep ratio, light to heavy."""
    levels = list(itertools.product((0.0, 0.5, 0.75, 0.9), (8, 4, 2), (1.0, 0.5)))
    levels.sort(key=lambda x: (1 - x[0]) * x[1] * x[2], reverse=True)
    step = len(levels) / n
    chosen = [levels[int(i * step)] for i in range(n)] if n < len(levels) else levels

    def plans(space):
        out = []
        for sparsity, bits, keep in chosen[:n]:
            plan = CompressionPlan.uniform(
                list(space.layers), sparsity=sparsity, bits=bits, keep_ratio=keep,
                temperature=4.0, alpha=0.7, keep_all=space.fixed_channels)
            out.append(space.plan_from_params(space.params_of(plan)))
        return out

    return plans


def measure_arm(result, data, teacher) -> dict:
    study = result.run.study
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    val_points, test_points = [], []
    for t in trials:
        a = t.user_attrs
        p = FrontPoint.of(t)
        val_points.append(p)
        model = load(result.run.artifact_path(t.number))
        test_acc = accuracy(model, data.x_test, data.y_test)
        test_points.append(FrontPoint(t.number, test_acc, a["size_bytes"], a["flops"], {}))
    states = [t.state.name for t in study.trials]
    return {
        "hypervolume_val": hypervolume(val_points, teacher),
        "hypervolume_test": hypervolume(test_points, teacher),
        "trials": len(states) - states.count("WAITING"), "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
        "epochs_trained": result.counts["epochs_trained"],
        "epochs_saved": result.counts["epochs_saved"],
        "front": len(result.front), "seconds": round(result.seconds, 1),
        "best_test_at_10x": max((p.accuracy for p in test_points
                                 if teacher["size_bytes"] / p.size_bytes >= 10), default=None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="search,random,uniform")
    ap.add_argument("--out", type=Path, default=Path("bench/results/hypervolume.json"))
    ap.add_argument("--run-root", type=Path, default=None)
    args = ap.parse_args()
    root = args.run_root or Path(tempfile.mkdtemp(prefix="slimtune-hv-"))
    common = dict(model=args.model, data=args.data, subset=args.subset, trials=args.trials,
                  epochs=args.epochs, teacher_epochs=args.teacher_epochs, seed=args.seed)
    arms = {
        "search": (dict(), None),
        "random": (dict(sampler="random", warm_start=False, early_stop=False), None),
        "uniform": (dict(sampler="random", warm_start=False, early_stop=False),
                    uniform_grid(args.trials)),
    }
    data = load_dataset(args.data, None, args.subset)
    out = {"command": "bench/hypervolume.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root")),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor() or ''}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "arms": {}}
    for name in args.arms.split(","):
        extra, plans = arms[name]
        config = SearchConfig(run_dir=root / name, **common, **extra)
        print(f"arm {name}: {args.trials} trials ...", flush=True)
        result = search(config, initial_plans=plans)
        teacher = result.run.teacher
        out["teacher"] = {k: teacher[k] for k in ("accuracy", "test_accuracy", "size_bytes",
                                                  "flops")}
        out["arms"][name] = measure_arm(result, data, teacher)
        print(name, json.dumps(out["arms"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
