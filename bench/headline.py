"""The headline results at full scale (issue 13): P1 and P2 on all of Fashion-MNIST.

Steps, each written to ``--out`` as it finishes (a rerun skips finished ones; a step cut
off is run again whole):

1. ``teacher``: vgg_small trained on the full training split (54 000 images, 10 epochs,
   ``slimtune train``), cached under ``--run-root``/cache.
2. ``search``: the multi-fidelity search (the defaults, ``--budget-epochs``) on a training
   subset (``--subset``), distilling from that full-data teacher (``--checkpoint``).
3. ``uniform``: the grid of uniform plans (every layer alike, bench/hypervolume.py's grid)
   with the same teacher, subset, epochs per plan and total fine-tune epochs.
4. ``finetune``: for each arm, the front points a user would pick for P1 and P2, each
   ``slimtune finetune``d for ``--finetune-epochs`` on the full training split; every card
   is measured on its own exported file, the test split read only there.

- **P1**: the smallest exported model keeping >= 98 % of the teacher's test accuracy;
- **P2**: the fewest effective MACs at <= 0.5 point below the teacher's test accuracy.

The candidates are picked on the search's validation accuracy, 3 epochs on a subset and
so well below what a converged point reaches: per arm, the smallest front point at >= 96 %
and at >= 92 % of the teacher's validation accuracy, the fewest MACs at <= 2 and at <= 4
points below it. P1 and P2 are then read among the converged candidates on the test split
(a choice among at most four per arm: a user would look at the test numbers of the few
files they converged, too).

    .venv/bin/python bench/headline.py [--subset 6000 --budget-epochs 60 --epochs 3
        --finetune-epochs 5 --seed 0] [--out bench/results/headline.json]
        [--run-root /tmp/headline]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypervolume import git_commit, uniform_grid  # noqa: E402

P1_SHARE, P2_DROP = 0.98, 0.005
#: candidate thresholds on the search's validation accuracy, (P1 shares, P2 drops)
PICKS = ((0.96, 0.92), (0.02, 0.04))


def slimtune_bin() -> str:
    return str(Path(sys.executable).with_name("slimtune"))


def save(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)


def step_teacher(args, env) -> dict:
    cmd = [slimtune_bin(), "train", "--model", "vgg_small", "--data", "fashion-mnist",
           "--epochs", str(args.teacher_epochs), "--seed", str(args.seed), "--json"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rec = json.loads(res.stdout)
    rec["wall_seconds"] = round(time.perf_counter() - t0, 1)
    rec["command"] = " ".join(cmd[1:])
    return rec


def step_arm(name: str, args, teacher_pt: Path, root: Path) -> dict:
    from slimtune.search import SearchConfig
    from slimtune.search.engine import search

    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    common = dict(model="vgg_small", data="fashion-mnist", subset=args.subset,
                  epochs=args.epochs, seed=args.seed, checkpoint=teacher_pt, run_dir=run_dir)
    n = int(args.budget_epochs // args.epochs)
    if name == "search":
        config, plans = SearchConfig(**common, budget_epochs=args.budget_epochs,
                                     trials=10**6), None
    else:
        config = SearchConfig(**common, sampler="random", warm_start=False,
                              early_stop=False, trials=n)
        plans = uniform_grid(n)
    t0 = time.perf_counter()
    result = search(config, initial_plans=plans)
    teacher = result.run.teacher
    return {
        "run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 1),
        "counts": {k: v for k, v in result.counts.items() if isinstance(v, (int, float))},
        "teacher": {k: teacher[k] for k in ("accuracy", "size_bytes", "flops")},
        "front": [{"trial": p.trial, "val": p.accuracy, "size_bytes": p.size_bytes,
                   "flops": p.flops} for p in result.front],
    }


def candidates(arm: dict) -> list[tuple[str, int]]:
    """(why, trial) for the points a user would fine-tune, primary picks first."""
    t = arm["teacher"]["accuracy"]
    front = arm["front"]
    picks: list[tuple[str, int]] = []
    for share, drop in zip(*PICKS, strict=True):
        ok = [p for p in front if p["val"] >= share * t]
        if ok:
            picks.append((f"P1 val>={share:g}x", min(ok, key=lambda p: p["size_bytes"])["trial"]))
        ok = [p for p in front if p["val"] >= t - drop]
        if ok:
            picks.append((f"P2 val>=-{drop:g}", min(ok, key=lambda p: p["flops"])["trial"]))
    first: dict[int, str] = {}
    for why, n in picks:
        first.setdefault(n, why)  # a trial picked twice: converged once, under its first pick
    return [(why, n) for n, why in first.items()]


def step_finetune(arm: dict, trial: int, args, env, root: Path) -> dict:
    out = root / "converged" / f"{Path(arm['run_dir']).name}-{trial}.slim"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [slimtune_bin(), "finetune", arm["run_dir"], "--trial", str(trial),
           "--epochs", str(args.finetune_epochs), "--out", str(out), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    card = json.loads(out.with_suffix(".json").read_text())
    return {"trial": trial, "wall_seconds": round(time.perf_counter() - t0, 1),
            "command": " ".join(cmd[1:]), "size_bytes": card["size_bytes"],
            "flops": card["flops"], "val_accuracy": card["val_accuracy"],
            "test_accuracy": card["test_accuracy"], "ratios": card["ratios"],
            "plan": card.get("plan"), "finetune": card["finetune"]}


def headline(out: dict) -> dict:
    """P1 and P2 of each arm among its converged candidates (test split)."""
    t = out["teacher"]["test_accuracy"]
    res: dict = {}
    for arm, done in out.get("finetune", {}).items():
        pts = list(done.values())
        p1 = [p for p in pts if p["test_accuracy"] >= P1_SHARE * t]
        p2 = [p for p in pts if p["test_accuracy"] >= t - P2_DROP]
        res[arm] = {
            "P1": min(p1, key=lambda p: p["size_bytes"]) if p1 else None,
            "P2": min(p2, key=lambda p: p["flops"]) if p2 else None,
        }
        for k in ("P1", "P2"):
            if res[arm][k] is not None:
                p = res[arm][k]
                res[arm][k] = {"trial": p["trial"], "x_smaller": p["ratios"]["size_x_smaller"],
                               "x_fewer_macs": p["ratios"]["flops_x_fewer"],
                               "test_accuracy": p["test_accuracy"],
                               "of_teacher": p["test_accuracy"] / t,
                               "drop_points": 100 * (t - p["test_accuracy"])}
    return res


def tables(out: dict) -> str:
    """Every converged candidate of each arm, then P1 and P2 side by side."""
    t = out["teacher"]
    lines = [f"Teacher: test {t['test_accuracy']:.4f}, validation {t['val_accuracy']:.4f}, "
             f"{t['parameters']:,} weights; P1 needs test >= {P1_SHARE * t['test_accuracy']:.4f}"
             f", P2 >= {t['test_accuracy'] - P2_DROP:.4f}.", "",
             "| arm | trial | picked as | x smaller | x fewer MACs | search val (subset) | "
             "search file, full test | converged val | converged test | best epoch |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, done in out.get("finetune", {}).items():
        why = {n: w for w, n in out["picks"][arm]}
        for n, p in sorted(done.items(), key=lambda kv: kv[1]["size_bytes"]):
            f, s = p["finetune"], p["finetune"]["search"]
            lines.append(
                f"| {arm} | {n} | {why.get(int(n), '')} | {p['ratios']['size_x_smaller']:.1f} | "
                f"{p['ratios']['flops_x_fewer']:.1f} | {s['val_accuracy']:.4f} | "
                f"{s['test_accuracy_full']:.4f} | {p['val_accuracy']:.4f} | "
                f"{p['test_accuracy']:.4f} | {f['best_epoch']} of {f['epochs']} |")
    lines += ["", "| arm | P1: x smaller (test, of teacher) | P2: x fewer MACs (test, drop) |",
              "|---|---|---|"]
    for arm, h in out.get("headline", {}).items():
        p1, p2 = h["P1"], h["P2"]
        a = (f"**{p1['x_smaller']:.1f}x** ({p1['test_accuracy']:.4f}, "
             f"{100 * p1['of_teacher']:.1f} %)" if p1 else "none")
        b = (f"**{p2['x_fewer_macs']:.1f}x** ({p2['test_accuracy']:.4f}, "
             f"{p2['drop_points']:.2f} points)" if p2 else "none")
        lines.append(f"| {arm} | {a} | {b} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--budget-epochs", type=float, default=60)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="search,uniform")
    ap.add_argument("--points", default="P1,P2",
                    help="which picks to converge (P1: the size goal, P2: the MACs goal)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/headline.json"))
    ap.add_argument("--run-root", type=Path, default=Path("/tmp/headline"))
    ap.add_argument("--teacher-only", action="store_true", help="stop after step 1")
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown tables of --out and exit (runs nothing)")
    args = ap.parse_args()
    if args.table:
        print(tables(json.loads(args.out.read_text())))
        return
    root = args.run_root
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLIMTUNE_CACHE": str(root / "cache")}
    os.environ["SLIMTUNE_CACHE"] = env["SLIMTUNE_CACHE"]
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out.setdefault("commits", {})
    out.update(command="bench/headline.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root", "teacher_only", "table")),
        machine=f"{platform.node()} {os.cpu_count()} CPUs")

    def done(step: str, value) -> None:
        out["commits"][step] = git_commit()
        out.setdefault("dates", {})[step] = time.strftime("%Y-%m-%d %H:%M")
        save(out, args.out)
        print(f"[headline] {step} done", flush=True)

    if "teacher" not in out:
        print("[headline] teacher: 10 epochs on 54 000 images ...", flush=True)
        out["teacher"] = step_teacher(args, env)
        done("teacher", out["teacher"])
    if args.teacher_only:
        return
    teacher_pt = Path(out["teacher"]["path"])
    out.setdefault("arms", {})
    for name in args.arms.split(","):
        if name not in out["arms"]:
            print(f"[headline] {name}: {args.budget_epochs:g} fine-tune epochs on "
                  f"{args.subset} images ...", flush=True)
            out["arms"][name] = step_arm(name, args, teacher_pt, root)
            done(name, out["arms"][name])
    picks = {name: [(why, n) for why, n in candidates(out["arms"][name])
                    if why.split()[0] in args.points.split(",")]
             for name in args.arms.split(",")}
    out["picks"] = {k: [[why, n] for why, n in v] for k, v in picks.items()}
    order = sorted(((i, name, n) for name, v in picks.items() for i, (_, n) in enumerate(v)))
    out.setdefault("finetune", {})
    for _, name, n in order:
        arm_done = out["finetune"].setdefault(name, {})
        if str(n) in arm_done:
            continue
        print(f"[headline] finetune {name} trial {n} ...", flush=True)
        arm_done[str(n)] = step_finetune(out["arms"][name], n, args, env, root)
        out["headline"] = headline(out)
        done(f"finetune-{name}-{n}", arm_done[str(n)])
    out["headline"] = headline(out)
    save(out, args.out)
    print(json.dumps(out["headline"], indent=2))


if __name__ == "__main__":
    main()
