"""Time of one trial, this checkout against another commit's, in one run.

Issue 11 removed the four rebuilds of the compressed model's skeleton (zoo model +
torch-pruning + factorization) that each completed trial paid in the measuring path. This
times ``run_trial`` (compress, 1 fine-tune epoch, export, measure) of the same plan, the
same random teacher and the same data in both code bases, in separate processes that
alternate (A B A B ...), so machine noise falls on both alike. Prints one JSON line.

    git worktree add --detach /tmp/slimtune-base d504782   # the code before the change
    .venv/bin/python bench/trial_time.py --base /tmp/slimtune-base [--model small_cnn
        --data digits --plan 4 --epochs 1 --rounds 5 --repeats 3]

``--plan K`` is the K-th uniform warm-start plan of the default space (4: 50 % sparse,
half the channels, 4 bits: every knob's transform and codec at work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from slimtune.data.datasets import load_dataset
from slimtune.models.zoo import build_model
from slimtune.search.trial import TrialSpec, run_trial
from slimtune.spaces.space import SearchSpace
model, data_name, k, epochs, repeats, subset = sys.argv[1:7]
subset = int(subset) or None
data = load_dataset(data_name, None, subset, subset)
torch.manual_seed(0)
teacher = build_model(model, data.num_classes, data.input_shape).eval()
space = SearchSpace.from_model(teacher, data.input_shape)
plan = space.uniform_plans()[int(k)]
spec = TrialSpec(model=model, data=data_name, plan=plan.to_dict(), epochs=int(epochs),
                 lr=1e-3, batch_size=64, seed=1, threads=1, subset=subset, val_subset=subset,
                 early_stop=False)
state = teacher.state_dict()
run_trial(spec, state)  # warm-up: imports, caches
out = []
for _ in range(int(repeats)):
    t0 = time.perf_counter()
    r = run_trial(spec, state)
    out.append(time.perf_counter() - t0)
print(json.dumps({"seconds": out, "size_bytes": r["size_bytes"], "accuracy": r["accuracy"]}))
"""


def child(src: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, args.model, args.data, str(args.plan),
           str(args.epochs), str(args.repeats), str(args.subset)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{src}: the trial failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout of the code to compare")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--subset", type=int, default=0)
    ap.add_argument("--plan", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    times: dict[str, list[float]] = {"base": [], "this": []}
    seen: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, src in (("base", args.base), ("this", here)):
            r = child(src, args)
            times[name] += r["seconds"]
            seen[name] = {k: r[k] for k in ("size_bytes", "accuracy")}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.model, "data": args.data, "plan": args.plan, "epochs": args.epochs,
        "median_s": med, "ratio_this_over_base": med["this"] / med["base"],
        "saved_s": med["base"] - med["this"],
        "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "same_result": seen["base"] == seen["this"], "result": seen,
        "machine": f"{platform.node()} {os.cpu_count()} cpus",
    }))


if __name__ == "__main__":
    main()
