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
