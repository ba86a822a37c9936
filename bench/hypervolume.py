"""Does the search beat random search and compressing every layer alike?

Three arms, each a full slimtune search with the same trial budget, the same trial
function (compress, distil for --epochs, export, measure) and the same teacher:

  search   the default: NSGA-II, warm start (uniform plans, then sensitivity-guided ones),
           early stopping
  no-guided the same without the sensitivity-guided plans (an ablation; --arms to add it)
  random   Optuna's RandomSampler over the same space, no warm start, no early stopping
  uniform  a grid of uniform plans (every layer at the same sparsity, bits and channel
           keep ratio; no factorization; T=4, alpha=0.7), no early stopping

For each arm it reports the hypervolume of the front in the normalized space (size / teacher,
FLOPs / teacher, 1 - accuracy; reference (1, 1, 1)) with the validation accuracy the search
saw, and again with every trial's accuracy re-measured on the held-out test split from its
exported file; plus the trial epochs early stopping saved and the wall time.

    .venv/bin/python bench/hypervolume.py [--model vgg_small --data fashion-mnist
        --subset 2000 --val-subset 2000 --trials 24 --epochs 3 --seed 0]
        [--arms search,no-guided,random,uniform] [--out bench/results/hypervolume.json]

2000 training examples, 2000 validation ones (a search that ranks plans on 500 picks those
that were lucky on them: its front lost 0.01-0.015 of hypervolume from validation to
test, the uniform grid's 0.004), 3 fine-tune epochs, an 8-epoch teacher.
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

from slimtune.data.datasets import load_dataset
from slimtune.export.artifact import load
from slimtune.objectives.accuracy import accuracy
from slimtune.search import SearchConfig
from slimtune.search.engine import search
from slimtune.search.pareto import FrontPoint, hypervolume
from slimtune.spaces.plan import CompressionPlan


def grid_levels(n: int) -> list[tuple[float, int, float]]:
    """``n`` uniform (sparsity, bits, keep ratio) levels, light to heavy.

    Up to 24 trials: evenly spaced picks from sparsity {0, .5, .75, .9} x bits {8, 4, 2} x
    keep ratio {1, .5}; beyond 24, keep ratios .75 and .35 are added, so a larger budget
    buys a denser grid, never random plans."""
    base = list(itertools.product((0.0, 0.5, 0.75, 0.9), (8, 4, 2), (1.0, 0.5)))
    more = list(itertools.product((0.0, 0.5, 0.75, 0.9), (8, 4, 2), (0.75, 0.35)))
    levels = base if n <= len(base) else base + more

    def heavy(x: tuple[float, int, float]) -> float:
        return (1 - x[0]) * x[1] * x[2] ** 2  # about the size, relative

    levels.sort(key=heavy, reverse=True)
    if n >= len(levels):
        return levels
    return [levels[int(i * len(levels) / n)] for i in range(n)]


def uniform_grid(n: int):
    """Plans for ``initial_plans``: the grid of :func:`grid_levels`, T=4, alpha=0.7."""
    chosen = grid_levels(n)

    def plans(space):
        out = []
        for sparsity, bits, keep in chosen:
            plan = CompressionPlan.uniform(
                list(space.layers), sparsity=sparsity, bits=bits, keep_ratio=keep,
                temperature=4.0, alpha=0.7, keep_all=space.fixed_channels)
            out.append(space.plan_from_params(space.params_of(plan)))
        return out

    return plans


def load_teacher(run):
    """The run's teacher (RUN_DIR/teacher.pt, a state dict), in eval mode."""
    import torch

    from slimtune.models.zoo import build_model

    meta = run.meta
    model = build_model(meta["config"]["model"], meta["num_classes"], tuple(meta["input_shape"]))
    model.load_state_dict(torch.load(run.dir / "teacher.pt", weights_only=True))
    return model.eval()


def measure_arm(result, test, teacher) -> dict:
    """The arm's front (chosen on validation accuracy, as a user chooses) and its
    hypervolume, with validation accuracy and again with each front point's exported file
    re-measured on the test split ``test`` (never read by the search)."""
    study = result.run.study
    front = result.front
    test_front = []
    for p in front:
        model = load(result.run.artifact_path(p.trial))
        test_front.append(FrontPoint(p.trial, accuracy(model, *test), p.size_bytes, p.flops, {}))
    states = [t.state.name for t in study.trials]
    return {
        "hypervolume_val": hypervolume(front, teacher),
        "hypervolume_test": hypervolume(test_front, teacher),
        # size and FLOPs in decades (1000x = 0 loss): the linear axes saturate
        "hypervolume_test_log": hypervolume(test_front, teacher, log=True),
        "trials": len(states) - states.count("WAITING"), "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
        "epochs_trained": result.counts["epochs_trained"],
        "epochs_saved": result.counts["epochs_saved"],
        "seconds": round(result.seconds, 1),
        "front": [{"trial": p.trial, "val": round(p.accuracy, 4), "test": round(q.accuracy, 4),
                   "size_ratio": round(p.size_bytes / teacher["size_bytes"], 5),
                   "flops_ratio": round(p.flops / teacher["flops"], 5)}
                  for p, q in zip(front, test_front, strict=True)],
    }


def git_commit() -> str:
    """The checkout's commit, with "+changes" when files differ from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain",
                                                                     "src") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--val-subset", type=int, default=2000,
                    help="validation examples the search chooses on (0: subset / 4)")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="search,random,uniform")
    ap.add_argument("--out", type=Path, default=Path("bench/results/hypervolume.json"))
    ap.add_argument("--run-root", type=Path, default=None)
    args = ap.parse_args()
    root = args.run_root or Path(tempfile.mkdtemp(prefix="slimtune-hv-"))
    common = dict(model=args.model, data=args.data, subset=args.subset,
                  val_subset=args.val_subset or None, trials=args.trials,
                  epochs=args.epochs, teacher_epochs=args.teacher_epochs, seed=args.seed)
    arms = {
        "search": (dict(), None),
        # ablation: the search without the sensitivity-guided plans (uniform warm start only)
        "no-guided": (dict(guided=False), None),
        "random": (dict(sampler="random", warm_start=False, early_stop=False), None),
        "uniform": (dict(sampler="random", warm_start=False, early_stop=False),
                    uniform_grid(args.trials)),
    }
    # the test split in full (the official 10,000 images for Fashion-MNIST), not the
    # subset's quarter: front points are compared on many more examples than they were chosen on
    full = load_dataset(args.data, None, None)
    test = (full.x_test, full.y_test)
    out = {"command": "bench/hypervolume.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root") and v is not None),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor() or ''}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "arms": {}}
    for name in args.arms.split(","):
        extra, plans = arms[name]
        config = SearchConfig(run_dir=root / name, **common, **extra)
        print(f"arm {name}: {args.trials} trials ...", flush=True)
        result = search(config, initial_plans=plans)
        teacher = result.run.teacher
        out["teacher"] = {k: teacher[k] for k in ("accuracy", "size_bytes", "flops")}
        out["teacher"]["test_accuracy_full"] = accuracy(load_teacher(result.run), *test)
        out["arms"][name] = {**measure_arm(result, test, teacher), "commit": out["commit"]}
        arm = out["arms"][name]
        print(name, json.dumps({k: v for k, v in arm.items() if k != "front"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
