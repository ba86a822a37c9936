"""Fractional GPUs: trials per hour with one trial per GPU against four sharing one.

Runs the same search twice in one Ray cluster, with ``--gpus-per-trial 1`` and then
``0.25`` (same model, data, trial count and seed, no warm start so both draw the same
plans), and reports for each: the most trials that ran at the same time (from each trial's
start and end, trial attribute ``ran``), wall time, trials per hour, the devices the trials
ran on, and the ratio of the two throughputs.

On a GPU machine:

    .venv/bin/python bench/gpu_share.py --model resnet20 --data cifar10 --data-dir DIR \\
        --subset 5000 --trials 16 --epochs 2

``--logical-gpus N`` starts the local Ray cluster with N GPUs declared but none present:
Ray then places the trials as it would on N GPUs (four at once at 0.25 a GPU) and they run
on the CPU. That checks the placement, not GPU speed; the JSON says which it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path


def run(root: Path, gpus_per_trial: float, args: argparse.Namespace) -> dict:
    from slimtune.search import SearchConfig
    from slimtune.search.engine import search
    from slimtune.search.study import most_at_once

    config = SearchConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, subset=args.subset,
        trials=args.trials, epochs=args.epochs, teacher_epochs=args.teacher_epochs,
        seed=args.seed, warm_start=False, early_stop=False, sampler="random",
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus_per_trial,
        run_dir=root / f"gpus-{gpus_per_trial:g}")
    t0 = time.perf_counter()
    result = search(config)
    wall = time.perf_counter() - t0
    done = [t for t in result.run.study.trials if t.state.name == "COMPLETE"]
    ran = [t.user_attrs["ran"] for t in done]
    span = max(b for _, b in ran) - min(a for a, _ in ran)  # first start to last end
    return {
        "gpus_per_trial": gpus_per_trial, "trials": len(done),
        "max_at_once": most_at_once(done), "seconds_trials": round(span, 1),
        "seconds_search": round(wall, 1),
        "trials_per_hour": round(3600 * len(done) / span, 1),
        "devices": sorted({t.user_attrs.get("device", "?") for t in done}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus-per-trial", type=float, default=0.5)
    ap.add_argument("--address", default=None, help="join this Ray cluster")
    ap.add_argument("--logical-gpus", type=int, default=0,
                    help="declare this many GPUs to a local cluster (placement check only)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray
    import torch

    if args.address:
        ray.init(address=args.address, include_dashboard=False, logging_level=logging.ERROR)
    else:
        ray.init(num_cpus=os.cpu_count(), num_gpus=args.logical_gpus or None,
                 include_dashboard=False, logging_level=logging.ERROR)
    gpus = ray.cluster_resources().get("GPU", 0)
    out = {
        "command": "bench/gpu_share.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k != "out"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "cluster_gpus": gpus,
        "placement_only": not torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for share in (1.0, 0.25):
            out["runs"].append(run(Path(tmp), share, args))
            print(json.dumps(out["runs"][-1]), flush=True)
    ray.shutdown()
    one, four = out["runs"]
    out["throughput_ratio"] = round(four["trials_per_hour"] / one["trials_per_hour"], 2)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
