"""User code the tests load by import path, as `module:function` and `module:factory`."""

from __future__ import annotations

import torch
from torch import nn


def tiny_data():
    """(train, val, test) pairs of tensors: digits-like 1 x 8 x 8 images, 4 classes."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 1, 8, 8, generator=g)

    def make(n):
        y = torch.arange(n) % 4
        return protos[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g), y

    return make(200), make(60), make(60)


def make_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, num_classes),
    )


def cheap_trial(spec, teacher_state):
    """Plan-dependent numbers at once; trials 3 and 5 raise like a broken layer would."""
    number = spec.seed % 100003
    if number in (3, 5):
        raise RuntimeError(f"layer cannot be handled (trial {number})")
    layers = list(spec.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    return {"accuracy": 1.0 - 0.5 * s, "size_bytes": int(5000 * (1 - s) * bits) + 1,
            "flops": int(600_000 * (1 - s)) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": b"", "seconds": 0.0}
