"""Tiny models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class TwoLinear(nn.Module):
    """Linear(4 -> 3) -> ReLU -> Linear(3 -> 2): every number countable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNet(nn.Module):
    """Conv(1 -> 4, 3x3, pad 1) on 6x6 -> ReLU -> Conv(4 -> 8, 3x3, stride 2, pad 1) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


def random_plans(model: nn.Module, input_shape: tuple[int, ...], n: int, seed: int,
                 pruning: str = "both") -> list:
    """``n`` plans drawn by Optuna's random sampler from ``model``'s search space."""
    import optuna

    from slimtune.spaces import SearchSpace

    space = SearchSpace.from_model(model, input_shape, pruning=pruning)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    plans = []
    for _ in range(n):
        trial = study.ask()
        plans.append(space.sample(trial))
        study.tell(trial, 0.0)
    return plans
