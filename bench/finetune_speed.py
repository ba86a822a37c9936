"""P5 (issue 13): slimtune's fine-tune against a bare PyTorch loop training the same
student on the same tensors, in one process, rounds alternating (bare, distill, trial).

- ``bare``: the loop anyone would write: Adam, the cosine schedule, shuffled batches of
  64, ``kd_loss`` against the teacher's logits computed beforehand, ``backward``, ``step``;
  no evaluation, no host synchronisation.
- ``distill``: ``compress.distill`` for the same epochs, the same logits.
- ``trial``: ``search.trial.run_trial``, everything a search's trial does: the data and
  teacher set up, the plan applied, BatchNorm re-estimated, the student encoded before and
  after, validation after every epoch, and the teacher's logits from the worker's cache
  (filled by a warm-up trial, as a search's first trial on each worker fills it).

Each timing starts from a fresh student of the same plan (``apply`` untimed but in
``trial``). Prints one JSON line: medians, spreads and the ratios to ``bare``.

    .venv/bin/python bench/finetune_speed.py [--model vgg_small --data fashion-mnist
        --subset 6000 --plan 4 --epochs 1 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings

import torch

from slimtune.compress.apply import apply
from slimtune.compress.distill import DistillConfig, distill, kd_loss
from slimtune.data.datasets import load_dataset
from slimtune.models.zoo import build_model
from slimtune.search.trial import TrialSpec, run_trial
from slimtune.spaces.space import SearchSpace


def bare_loop(student, x, y, logits, epochs: int, t: float, a: float, seed: int) -> None:
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = kd_loss(student(x[idx]), logits[idx], y[idx], t, a)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--plan", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    subset = args.subset or None
    data = load_dataset(args.data, None, subset)  # validation: a quarter, as a search's
    torch.manual_seed(0)
    teacher = build_model(args.model, data.num_classes, data.input_shape).eval()
    space = SearchSpace.from_model(teacher, data.input_shape)
    plan = space.uniform_plans()[args.plan]
    train = data.train
    x, y = train.x, train.y
    with torch.no_grad():
        logits = torch.cat([teacher(x[i:i + 512]) for i in range(0, len(x), 512)])
    spec = TrialSpec(model=args.model, data=args.data, plan=plan.to_dict(), epochs=args.epochs,
                     lr=1e-3, batch_size=64, seed=1, threads=torch.get_num_threads(),
                     subset=subset, early_stop=False)
    state = teacher.state_dict()
    run_trial(spec, state)  # warm-up: imports, the worker's logits cache
    cfg = DistillConfig(temperature=plan.temperature, alpha=plan.alpha, epochs=args.epochs)
    times: dict[str, list[float]] = {"bare": [], "distill": [], "trial": []}
    for _ in range(args.rounds):
        student = apply(teacher, plan, data.input_shape)
        t0 = time.perf_counter()
        bare_loop(student, x, y, logits, args.epochs, plan.temperature, plan.alpha, 1)
        times["bare"].append(time.perf_counter() - t0)
        student = apply(teacher, plan, data.input_shape)
        t0 = time.perf_counter()
        distill(student, logits, train, cfg, generator=torch.Generator().manual_seed(1))
        times["distill"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_trial(spec, state)
        times["trial"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.model, "data": args.data, "subset": args.subset, "plan": args.plan,
        "epochs": args.epochs, "threads": torch.get_num_threads(), "median_s": med,
        "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "ratio_distill_over_bare": med["distill"] / med["bare"],
        "ratio_trial_over_bare": med["trial"] / med["bare"],
        "machine": f"{platform.node()} {os.cpu_count()} cpus",
    }))


if __name__ == "__main__":
    main()
