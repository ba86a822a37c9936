"""What the trust boundary's checks cost a load: ``decode`` of a compressed artifact against
the bounded-work checks it runs first (header parse + the ``meta``-device model build and
forward pass of ``export/header.py``), interleaved in one run.

    .venv/bin/python bench/load_checks.py [--repeats 7]

Prints one JSON line per model: median seconds of the checks and of the whole decode,
and their ratio. Every trial of a search decodes its own artifact once, so the checks'
cost is paid once per trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from slimtune.compress.apply import apply
from slimtune.export.artifact import decode, encode
from slimtune.export.header import check_model_bounds, parse_head
from slimtune.models.zoo import build_model
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from slimtune.trust import NO_TRUST

MODELS = {"small_cnn": (1, 8, 8), "vgg_small": (1, 28, 28), "resnet20": (3, 32, 32)}


def _plan(model: torch.nn.Module, shape: tuple[int, ...]) -> CompressionPlan:
    from slimtune.compress.structured import output_layers

    out = set(output_layers(model, shape))
    layers = {n: LayerPlan(sparsity=0.5, bits=4, keep_ratio=1.0 if n in out else 0.5)
              for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    return CompressionPlan(layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, shape in MODELS.items():
        model = build_model(name, 10, shape)
        plan = _plan(model, shape)
        blob = encode(apply(model, plan, shape), name, 10, shape, plan)
        checks, loads = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            header, start = parse_head(blob, len(blob))
            check_model_bounds(header, len(blob), start, None, NO_TRUST, "bench")
            checks.append(time.perf_counter() - t)
            t = time.perf_counter()
            decode(blob)
            loads.append(time.perf_counter() - t)
        c, d = statistics.median(checks), statistics.median(loads)
        print(json.dumps({"model": name, "bytes": len(blob), "checks_s": round(c, 4),
                          "decode_s": round(d, 4), "checks_share": round(c / d, 3),
                          "repeats": args.repeats}))


if __name__ == "__main__":
    main()
