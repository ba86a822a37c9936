"""Teacher training, cached once per run directory."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.data.datasets import Splits
from slimtune.errors import RunDirError
from slimtune.models.zoo import build_model
from slimtune.objectives.accuracy import accuracy

__all__ = ["TeacherConfig", "train_teacher", "load_or_train_teacher"]


@dataclass(frozen=True)
class TeacherConfig:
    epochs: int = 40
    lr: float = 3e-3  # peak AdamW learning rate of the one-cycle schedule
    batch_size: int = 64
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    seed: int = 0


def train_teacher(
    model: nn.Module,
    data: Splits,
    config: TeacherConfig,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` on the train split; ``on_epoch(epoch, epochs, val_accuracy)``."""
    gen = torch.Generator().manual_seed(config.seed)
    x, y = data.x_train, data.y_train
    n = len(x)
    steps = math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=max(1, config.epochs * steps)
    )
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs, accuracy(model, data.x_val, data.y_val))
    model.eval()
    return model


def load_or_train_teacher(
    path: Path,
    model_name: str,
    data: Splits,
    config: TeacherConfig,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, bool]:
    """The teacher cached at ``path``, trained and saved first if missing.

    Returns ``(model, trained_now)``.
    """
    torch.manual_seed(config.seed)
    model = build_model(model_name, data.num_classes, data.input_shape)
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any failure means the cache is unusable
            raise RunDirError(
                f"cannot read the cached teacher {path}: {exc}; delete it to retrain"
            ) from None
        model.eval()
        return model, False
    train_teacher(model, data, config, on_epoch)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model, True
