"""Does the search beat random search and compressing every layer alike?

Each arm is a full slimtune search with the same budget, the same fine-tune (compress,
distil for --epochs, export, measure) and the same teacher. With ``--budget-epochs``
(issue 12) the budget is in trial fine-tune epochs and every arm runs to the largest of
``--budgets``; a smaller budget's result is the same run's front when that many epochs had
been spent (for the fixed-trial arms: their first budget / epochs trials, which are
exactly the arm run at that budget, the grid and the allocator ordering their plans so):

  fidelity the multi-fidelity search (NSGA-II screening rung 0 from a warm start that
           holds the one-shot allocator's plans; promotion by hypervolume contribution,
           at most 1/eta of a rung, up rungs 0, epochs/9, epochs: the defaults)
  moasha   MO-ASHA as published: random plans, no warm start, no rung 0 (rungs epochs/9,
           epochs/3, epochs), promotion by non-dominated sorting and crowding
  oneshot  the one-shot allocator (search/allocate.py) for size and FLOPs targets spread
           along the front, each plan fine-tuned with the full --epochs

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
from slimtune.search.allocate import spread_plans
from slimtune.search.engine import search
from slimtune.search.guided import Sensitivity
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


def first_then_rest(n_small: int, n: int) -> list:
    """``n`` grid levels whose first ``n_small`` are exactly ``grid_levels(n_small)``."""
    small = grid_levels(n_small)
    return small + [lv for lv in grid_levels(n) if lv not in small][: n - n_small]


def uniform_grid_nested(n_small: int, n: int):
    chosen = first_then_rest(n_small, n)

    def plans(space):
        return [space.plan_from_params(space.params_of(CompressionPlan.uniform(
            list(space.layers), sparsity=s, bits=b, keep_ratio=k, temperature=4.0, alpha=0.7,
            keep_all=space.fixed_channels))) for s, b, k in chosen]

    return plans


def allocator_plans(sens: Sensitivity, n: int):
    """The allocator's arm: its first ``n`` distinct plans along targets spread over the
    front (search/allocate.py, :func:`spread_plans`)."""
    return lambda space: spread_plans(sens, space, n)


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


def _jobs_in_order(run) -> list:
    """Every finished job of a run (main and screening study), in order of completion."""
    import optuna
    from optuna.trial import TrialState

    from slimtune.search.fidelity_loop import screen_name

    studies = [run.study]
    try:
        studies.append(optuna.load_study(study_name=screen_name("slimtune"),
                                         storage=run.study._storage))
    except KeyError:
        pass
    jobs = [(t.datetime_complete, s is run.study, t) for s in studies
            for t in s.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [(main, t) for _, main, t in sorted(jobs, key=lambda j: (j[0], not j[1]))]


def front_at(run, epochs_per_trial: int, budget: float, fixed: bool) -> list[FrontPoint]:
    """The front of the top-rung results finished once ``budget`` fine-tune epochs had
    been spent (``fixed``: the first budget / epochs trials, a run of that budget)."""
    from optuna.trial import TrialState

    from slimtune.objectives.dominance import nondominated

    if fixed:
        n = int(budget // epochs_per_trial)
        done = [t for t in run.study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
                if t.number < n]
    else:
        done, spent = [], 0.0
        for main, t in _jobs_in_order(run):
            spent += float(t.user_attrs.get("epochs_trained", 0.0))
            if spent > budget + 1e-9:
                break
            if main and t.state == TrialState.COMPLETE:
                done.append(t)
    done = [t for t in done if all(c <= 0 for c in t.constraints.values())]
    directions = [d.name.lower() for d in run.study.directions]
    return [FrontPoint.of(t) for t in nondominated(done, lambda t: t.values, directions)]


def measure_budget(run, front, test, teacher, cache: dict) -> dict:
    """Hypervolumes (val, test, test in log space) of ``front``, its points re-measured
    on the full test split (``cache``: trial -> test accuracy)."""
    test_front = []
    for p in front:
        if p.trial not in cache:
            cache[p.trial] = accuracy(load(run.artifact_path(p.trial)), *test)
        test_front.append(FrontPoint(p.trial, cache[p.trial], p.size_bytes, p.flops, {}))
    return {
        "hypervolume_val": hypervolume(front, teacher),
        "hypervolume_test": hypervolume(test_front, teacher),
        "hypervolume_test_log": hypervolume(test_front, teacher, log=True),
        "front": [{"trial": p.trial, "val": round(p.accuracy, 4), "test": round(q.accuracy, 4),
                   "size_ratio": round(p.size_bytes / teacher["size_bytes"], 5),
                   "flops_ratio": round(p.flops / teacher["flops"], 5)}
                  for p, q in zip(front, test_front, strict=True)],
    }


def budget_mode(args) -> None:
    """Issue 12's comparison: every arm to the largest budget, measured at each."""
    import shutil

    budgets = sorted(float(b) for b in args.budgets.split(","))
    top = budgets[-1]
    n_trials = int(top // args.epochs)
    n_small = int(budgets[0] // args.epochs)
    root = args.run_root or Path(tempfile.mkdtemp(prefix="slimtune-hvb-"))
    common = dict(model=args.model, data=args.data, subset=args.subset or None,
                  val_subset=args.val_subset or None, epochs=args.epochs,
                  teacher_epochs=args.teacher_epochs, seed=args.seed)
    e = float(args.epochs)
    arms = {
        "fidelity": dict(budget_epochs=top, trials=10**6),
        "search": dict(budget_epochs=top, fidelity=False, trials=n_trials),
        "uniform": dict(sampler="random", warm_start=False, early_stop=False, trials=n_trials),
        "random": dict(sampler="random", warm_start=False, early_stop=False, trials=n_trials),
        "moasha": dict(budget_epochs=top, trials=10**6, sampler="random", warm_start=False,
                       rungs=(e / 9, e / 3, e), promotion="moasha"),
        "oneshot": dict(sampler="random", warm_start=False, early_stop=False, trials=n_trials),
    }
    full = load_dataset(args.data, None, None)
    test = (full.x_test, full.y_test)
    out = json.loads(args.out.read_text()) if args.out.exists() else {"arms": {}}
    out.update({"command": "bench/hypervolume.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root") and v is not None),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor() or ''}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit()})
    for name in args.arms.split(","):
        if name in out["arms"]:
            print(f"arm {name}: done already, skipped", flush=True)
            continue
        run_dir = root / name
        shutil.rmtree(run_dir, ignore_errors=True)  # an arm cut off is run again whole
        plans = None
        if name == "uniform":
            plans = uniform_grid_nested(n_small, n_trials)
        elif name == "oneshot":
            plans = allocator_plans(Sensitivity.from_dict(out["sensitivity"]), n_trials)
        teacher_pt = root / "teacher.pt"
        if teacher_pt.exists():  # one teacher per seed, trained by the first arm
            run_dir.mkdir(parents=True)
            shutil.copy(teacher_pt, run_dir / "teacher.pt")
        config = SearchConfig(run_dir=run_dir, **common, **arms[name])
        print(f"arm {name}: budget {top:g} trial epochs ...", flush=True)
        result = search(config, initial_plans=plans)
        if not teacher_pt.exists():
            shutil.copy(run_dir / "teacher.pt", teacher_pt)
        teacher = result.run.teacher
        out["teacher"] = {k: teacher[k] for k in ("accuracy", "size_bytes", "flops")}
        out["teacher"]["test_accuracy_full"] = accuracy(load_teacher(result.run), *test)
        if "sensitivity" in result.run.meta:
            out["sensitivity"] = result.run.meta["sensitivity"]
        fixed = not config.fidelity
        cache: dict = {}
        arm = {"seconds": round(result.seconds, 1), "counts": {
            k: v for k, v in result.counts.items() if isinstance(v, (int, float, list))},
            "budgets": {}}
        # half the top budget: the anytime check (the search there against the grid at the
        # top), for the multi-fidelity arm alone (each front point costs a test pass)
        for b in sorted({*budgets, *([top / 2] if name == "fidelity" else [])}):
            front = front_at(result.run, args.epochs, b, fixed)
            arm["budgets"][f"{b:g}"] = measure_budget(result.run, front, test, teacher, cache)
        out["arms"][name] = arm
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))  # each arm as it finishes
        print(name, json.dumps({b: {k: v for k, v in m.items() if k != "front"}
                                for b, m in arm["budgets"].items()}), flush=True)


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
    ap.add_argument("--budgets", default=None,
                    help="budgets in trial epochs, e.g. 72,120: issue 12's comparison "
                         "(arms fidelity,search,uniform,random,moasha,oneshot)")
    args = ap.parse_args()
    if args.budgets:
        return budget_mode(args)
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
