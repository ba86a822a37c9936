"""What the low-bit quantizer's clipping buys (issue 13's ablation).

The same plans, the same teacher, the same fine-tune, with each clipping of
``slimtune.ops.quantize.CLIP`` at 4 bits or fewer, in one process: ``max`` (max-abs
scaling), ``mse`` (the per-channel MSE-optimal ratio searched at every step) and
``learned`` (started there, then learned with the LSQ gradient; the default):

- ``bits-B``: every layer at B bits (2, 3, 4), nothing else;
- ``prune-B``: every layer at B bits, 50 % sparse, 75 % of its channels kept;
- ``mixed-B``: the first and the last layer at 8 bits, the others at B (per-layer bits).

For each: validation accuracy after the BatchNorm re-estimation (zero-shot) and test
accuracy on the full test split after ``--epochs`` of distillation, measured on the
exported file. Each finished (seed, plan, clip) is written to ``--out`` at once; a rerun
skips it. Then a table: mean test accuracy per clip and the paired differences to max-abs.

    .venv/bin/python bench/quantizer.py [--model vgg_small --data fashion-mnist
        --subset 2000 --teacher-epochs 8 --epochs 3 --seeds 0,1,2 --clips max,learned,mse]
        [--out bench/results/quantizer.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import slimtune.ops.quantize as quant
from slimtune.compress import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.compress.recalibrate import recalibrate_batchnorm
from slimtune.data.datasets import load_dataset
from slimtune.models.teacher import TeacherConfig, load_or_train_teacher
from slimtune.objectives.accuracy import accuracy
from slimtune.objectives.measure import Measured
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from slimtune.spaces.space import SearchSpace


def plans(space: SearchSpace) -> dict[str, CompressionPlan]:
    layers = list(space.layers)
    out = {}
    for b in (2, 3, 4):
        out[f"bits-{b}"] = CompressionPlan.uniform(layers, bits=b, temperature=4.0, alpha=0.7)
        out[f"prune-{b}"] = CompressionPlan.uniform(
            layers, sparsity=0.5, bits=b, keep_ratio=0.75, temperature=4.0, alpha=0.7,
            keep_all=space.fixed_channels)
        out[f"mixed-{b}"] = CompressionPlan(
            {n: LayerPlan(bits=8 if n in (layers[0], layers[-1]) else b) for n in layers},
            temperature=4.0, alpha=0.7)
    return {k: space.plan_from_params(space.params_of(p)) for k, p in out.items()}


def run_one(teacher, plan, data, full_test, epochs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    student = apply(teacher, plan, data.input_shape)
    recalibrate_batchnorm(student, data.train, generator=torch.Generator().manual_seed(seed))
    zero_shot = accuracy(student, data.val)
    torch.manual_seed(seed)
    distill(student, teacher, data.train,
            DistillConfig(temperature=plan.temperature, alpha=plan.alpha, epochs=epochs),
            generator=torch.Generator().manual_seed(seed))
    m = Measured.of(student, "model", data.num_classes, data.input_shape, plan, data.val)
    return {"zero_shot_val": zero_shot, "val": m.accuracy(),
            "test": accuracy(m.model, full_test), "size_bytes": len(m.blob),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--clips", default="max,learned,mse")
    ap.add_argument("--out", type=Path, default=Path("bench/results/quantizer.json"))
    args = ap.parse_args()
    default = quant.CLIP
    data = load_dataset(args.data, None, args.subset, args.subset)
    full_test = load_dataset(args.data).test
    out = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    out.update(command="bench/quantizer.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        machine=f"{platform.node()} {torch.get_num_threads()} threads",
        commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip())
    for seed in (int(s) for s in args.seeds.split(",")):
        teacher, _ = load_or_train_teacher(
            None, args.model, data, TeacherConfig(epochs=args.teacher_epochs, seed=seed),
            data_name=args.data, subset=args.subset)
        teacher.eval()
        space = SearchSpace.from_model(teacher, data.input_shape)
        for name, plan in plans(space).items():
            for clip in args.clips.split(","):
                key = f"{seed}/{name}/{clip}"
                if key in out["runs"]:
                    continue
                quant.CLIP = clip
                out["runs"][key] = run_one(teacher, plan, data, full_test, args.epochs, seed)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(out, indent=2))
                print(key, out["runs"][key], flush=True)
    quant.CLIP = default
    table(out["runs"], args.clips.split(","))


def table(runs: dict, clips: list[str]) -> None:
    """Per plan: mean test accuracy with each clip, the paired differences to max-abs per
    seed, and the zero-shot validation accuracy (BatchNorm re-estimated, no training)."""
    names = sorted({k.split("/")[1] for k in runs}, key=lambda n: (n.split("-")[0], n))
    seeds = sorted({k.split("/")[0] for k in runs})
    others = [c for c in clips if c != "max"]
    print("| plan | " + " | ".join(f"{c} test (mean)" for c in clips) + " | "
          + " | ".join(f"{c} - max, each seed" for c in others)
          + " | zero-shot val, " + " / ".join(clips) + " |")
    print("|---|" + "---:|" * len(clips) + "---|" * len(others) + "---|")
    for n in names:
        rows = [[runs[f"{s}/{n}/{c}"] for c in clips] for s in seeds
                if all(f"{s}/{n}/{c}" in runs for c in clips)]
        if not rows:
            continue
        mean = [statistics.mean(r[i]["test"] for r in rows) for i in range(len(clips))]
        diffs = [", ".join(f"{r[i]['test'] - r[0]['test']:+.3f}" for r in rows)
                 for i in range(1, len(clips))]
        zero = [statistics.mean(r[i]["zero_shot_val"] for r in rows) for i in range(len(clips))]
        print(f"| {n} | " + " | ".join(f"{m:.4f}" for m in mean) + " | " + " | ".join(diffs)
              + " | " + " / ".join(f"{z:.3f}" for z in zero) + " |")


if __name__ == "__main__":
    main()
