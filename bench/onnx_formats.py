"""ONNX flavours of a front (issue 16): size, ONNX Runtime latency and test accuracy of
each file, for the teacher and three front points.

Steps, each written to ``--out`` as it finishes (a rerun skips finished ones):

1. ``teacher`` (vgg_small only): trained on the full Fashion-MNIST training split
   (``slimtune train``), cached under ``--run-root``/cache.
2. ``search``: the default multi-fidelity search on a training subset, distilling from it.
3. ``finetune``: three front points (bench/headline.py's picks: the fewest MACs and the
   smallest within a few points of the teacher's validation accuracy), each
   ``slimtune finetune``d on the full training split.
4. ``onnx``: for the teacher and each point, ``slimtune export --onnx float,lowbit,qdq``;
   the size of each file, its test accuracy run in ONNX Runtime, and its ONNX Runtime CPU
   latency at batch 1 and 32 (median of repeated runs, all files timed in one process,
   interleaved, so the ratios to the teacher's float32 file compare like with like).

With ``--run-dir`` (e.g. the default digits run of ``bash scripts/run.sh``) steps 1-3 are
skipped: the teacher and three front points of that run are exported as they are.

    .venv/bin/python bench/onnx_formats.py [--teacher-epochs 4 --subset 6000
        --budget-epochs 30 --finetune-epochs 2] [--out bench/results/onnx-vgg.json]
        [--run-root /tmp/onnx-bench]
    .venv/bin/python bench/onnx_formats.py --run-dir runs/digits-small_cnn \
        --out bench/results/onnx-digits.json
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

from headline import candidates, save, slimtune_bin, step_teacher  # noqa: E402
from hypervolume import git_commit  # noqa: E402

FLAVOURS = ("float", "lowbit", "qdq")
BATCHES = (1, 32)


def step_search(args, teacher_pt: Path, root: Path) -> dict:
    from slimtune.search import SearchConfig
    from slimtune.search.engine import search

    run_dir = root / "search"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = SearchConfig(model="vgg_small", data="fashion-mnist", subset=args.subset,
                          epochs=args.epochs, seed=args.seed, checkpoint=teacher_pt,
                          run_dir=run_dir, budget_epochs=args.budget_epochs, trials=10**6)
    t0 = time.perf_counter()
    result = search(config)
    teacher = result.run.teacher
    return {
        "run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 1),
        "teacher": {k: teacher[k] for k in ("accuracy", "size_bytes", "flops")},
        "front": [{"trial": p.trial, "val": p.accuracy, "size_bytes": p.size_bytes,
                   "flops": p.flops} for p in result.front],
    }


def step_finetune(run_dir: str, trial: int, args, env, root: Path) -> dict:
    out = root / "converged" / f"trial-{trial}.slim"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [slimtune_bin(), "finetune", run_dir, "--trial", str(trial),
           "--epochs", str(args.finetune_epochs), "--out", str(out), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return {"trial": trial, "slim": str(out), "command": " ".join(cmd[1:]),
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, help="export this run's front as it is")
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--budget-epochs", type=float, default=30)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/onnx-vgg.json"))
    ap.add_argument("--run-root", type=Path, default=Path("/tmp/onnx-bench"))
    ap.add_argument("--until", choices=("teacher", "search", "finetune", "onnx"),
                    default="onnx", help="stop after this step")
    args = ap.parse_args()
    root = args.run_root
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLIMTUNE_CACHE": str(root / "cache")}
    os.environ["SLIMTUNE_CACHE"] = env["SLIMTUNE_CACHE"]
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out.setdefault("commits", {})
    out.update(command="bench/onnx_formats.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root", "until") and v is not None),
        machine=f"{platform.node()} {os.cpu_count()} CPUs")

    def done(step: str) -> None:
        out["commits"][step] = git_commit()
        out.setdefault("dates", {})[step] = time.strftime("%Y-%m-%d %H:%M")
        save(out, args.out)
        print(f"[onnx-bench] {step} done", flush=True)

    if args.run_dir is None:
        if "teacher" not in out:
            print(f"[onnx-bench] teacher: {args.teacher_epochs} epochs ...", flush=True)
            out["teacher"] = step_teacher(args, env)
            done("teacher")
        if args.until == "teacher":
            return
        if "search" not in out:
            print(f"[onnx-bench] search: {args.budget_epochs:g} fine-tune epochs ...",
                  flush=True)
            out["search"] = step_search(args, Path(out["teacher"]["path"]), root)
            done("search")
        if args.until == "search":
            return
        picks = [n for _, n in candidates(out["search"])][:3]
        out["picks"] = picks
        ft = out.setdefault("finetune", {})
        for n in picks:
            if str(n) not in ft:
                print(f"[onnx-bench] finetune trial {n} ...", flush=True)
                ft[str(n)] = step_finetune(out["search"]["run_dir"], n, args, env, root)
                done(f"finetune-{n}")
        if args.until == "finetune":
            return
    print("[onnx-bench] the onnx step is not written yet", flush=True)


if __name__ == "__main__":
    main()
