"""How well does rung 0 rank plans? (issue 12's premise, measured before building on it)

For N random plans of the default space (digits, small_cnn, the cached default teacher),
three validation accuracies: one-shot (compressed, nothing else), rung 0 (BatchNorm
statistics re-estimated on 8 training batches, no gradient step) and after the full
fine-tune (``--epochs``, as a trial). Prints one JSON line with Kendall's tau of each
cheap accuracy against the fine-tuned one, and the seconds each costs.

    .venv/bin/python bench/rung_ranking.py [--plans 24] [--epochs 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import optuna
import torch
from scipy.stats import kendalltau

from slimtune.compress import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.compress.recalibrate import recalibrate_batchnorm
from slimtune.data.datasets import load_dataset
from slimtune.models.teacher import TeacherConfig, default_teacher_epochs, load_or_train_teacher
from slimtune.objectives.accuracy import accuracy
from slimtune.spaces.space import SearchSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    teacher, _ = load_or_train_teacher(None, "small_cnn", data,
                                       TeacherConfig(epochs=default_teacher_epochs("digits")),
                                       data_name="digits")
    teacher.eval()
    space = SearchSpace.from_model(teacher, data.input_shape)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    rows, spent = [], {"one_shot": 0.0, "rung0": 0.0, "fine_tune": 0.0}
    for i in range(args.plans):
        trial = study.ask()
        plan = space.sample(trial)
        study.tell(trial, 0.0)
        t0 = time.perf_counter()
        student = apply(teacher, plan, data.input_shape)
        one_shot = accuracy(student, data.val)
        t1 = time.perf_counter()
        recalibrate_batchnorm(student, data.train, generator=torch.Generator().manual_seed(i))
        rung0 = accuracy(student, data.val)
        t2 = time.perf_counter()
        torch.manual_seed(i)
        distill(student, teacher, data.train, DistillConfig(
            temperature=plan.temperature, alpha=plan.alpha, epochs=args.epochs),
            generator=torch.Generator().manual_seed(i))
        final = accuracy(student, data.val)
        t3 = time.perf_counter()
        spent["one_shot"] += t1 - t0
        spent["rung0"] += t2 - t1
        spent["fine_tune"] += t3 - t2
        rows.append((one_shot, rung0, final))
    finals = [r[2] for r in rows]
    print(json.dumps({
        "plans": args.plans, "epochs": args.epochs, "seed": args.seed,
        "kendall_tau_one_shot": kendalltau([r[0] for r in rows], finals).statistic,
        "kendall_tau_rung0": kendalltau([r[1] for r in rows], finals).statistic,
        "seconds_per_plan": {k: v / args.plans for k, v in spent.items()},
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
