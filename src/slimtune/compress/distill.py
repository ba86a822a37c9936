"""Knowledge distillation: the loss and the fine-tune loop of a compressed student.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.errors import ConfigError

__all__ = ["DistillConfig", "kd_loss", "distill", "TrialDiverged"]


class TrialDiverged(RuntimeError):
    """The fine-tune produced a non-finite loss."""


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.5
    epochs: int = 5
    lr: float = 1e-3  # Adam learning rate at the start of the cosine schedule
    batch_size: int = 64
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"`temperature > 0` must hold, but got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"`0 <= alpha <= 1` must hold, but got {self.alpha}")
        if self.epochs < 0:
            raise ConfigError(f"`epochs >= 0` must hold, but got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size >= 1` must hold, but got {self.batch_size}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton's distillation loss, batch-mean KL scaled by ``T^2`` plus hard-label CE."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    ce = F.cross_entropy(student_logits, target)
    return alpha * t * t * kl + (1.0 - alpha) * ce


def distill(
    student: nn.Module,
    teacher: nn.Module | torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    config: DistillConfig,
    *,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Fine-tune ``student`` in place on ``(x, y)`` against the teacher.

    ``teacher`` is either the teacher's logits on ``x`` (precomputed once) or the teacher
    module, run on every (augmented) batch. Data are tensors already on the student's
    device; batches are index slices of a fresh permutation each epoch (no DataLoader).
    ``on_epoch(epoch, mean_loss)`` is called after every epoch.
    """
    if isinstance(teacher, nn.Module):
        teacher.eval()
        if augment is None:  # the same inputs every epoch: compute the logits once
            from slimtune.objectives.accuracy import logits_of

            teacher = logits_of(teacher, x)
    if config.epochs == 0 or len(x) == 0:
        return student
    n = len(x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    student.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            xb = x[idx] if augment is None else augment(x[idx], generator)
            if isinstance(teacher, nn.Module):
                with torch.no_grad():
                    t_logits = teacher(xb)
            else:
                t_logits = teacher[idx]
            loss = kd_loss(student(xb), t_logits, y[idx], config.temperature, config.alpha)
            if not torch.isfinite(loss):
                raise TrialDiverged(f"non-finite distillation loss at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / n)
    student.eval()
    return student
