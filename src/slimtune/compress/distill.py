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

from slimtune.data.split import Augment, Batch, Split, TensorSplit
from slimtune.errors import ConfigError
from slimtune.models.train import logits_of, train_loop

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
    train: Split | torch.Tensor,
    *rest: torch.Tensor | DistillConfig,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    steps: tuple[int, int] | None = None,
) -> nn.Module:
    """Fine-tune ``student`` in place on the split ``train`` against the teacher:
    ``distill(student, teacher, train, config)``.

    ``teacher`` is either the teacher's logits on ``train`` (precomputed, indexed by each
    batch's ``index``) or the teacher module: run once on the whole split when the split
    does not augment, else on every augmented batch. Batches are those of
    ``train.batches(config.batch_size, shuffle=True, generator=generator, augment=True)``
    on the student's device. ``on_epoch(epoch, mean_loss)`` is called after every epoch.
    The older form ``distill(student, teacher, x, y, config, augment=...)`` takes tensors.

    ``steps=(start, stop)``: run only steps ``start`` to ``stop`` of the cosine schedule laid
    out over ``config.epochs`` (a rung of the fidelity ladder continuing a student from
    step ``start``; Adam's moments start afresh). ``on_epoch`` then sees full passes only.
    """
    if isinstance(train, torch.Tensor):  # the older form: tensors x, y and the augment
        y, config = rest
        train = TensorSplit(train, y, augment)  # type: ignore[arg-type]
    elif augment is not None or len(rest) != 1:
        raise TypeError("`distill(student, teacher, train, config)` takes a split and its "
                        f"config (the split carries its augmentation), but got "
                        f"{1 + len(rest)} data arguments and augment={augment!r}")
    else:
        (config,) = rest
    if not isinstance(config, DistillConfig):
        raise TypeError(f"`config` must be a DistillConfig, but got a {type(config).__name__}")
    if isinstance(teacher, nn.Module):
        teacher.eval()
        if not train.augments:  # the same inputs every epoch: compute the logits once
            teacher = logits_of(teacher, train)
    n = len(train)
    if config.epochs == 0 or n == 0:
        return student
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * steps_per_epoch
    epochs, max_steps = config.epochs, None
    if steps is None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        start, stop = steps
        if not 0 <= start <= stop <= total_steps:
            raise ConfigError(f"`steps` must satisfy 0 <= start <= stop <= {total_steps} "
                              f"(the schedule's steps), but got {steps}")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(start + k, total_steps)
                                                  / total_steps)))
        max_steps = stop - start
        epochs = math.ceil(max_steps / steps_per_epoch)
        if max_steps == 0:
            return student
    cuda = next(student.parameters()).device.type == "cuda"
    total: torch.Tensor | float = 0.0  # this epoch's per-example losses summed, on the device

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        if isinstance(teacher, nn.Module):
            with torch.no_grad():
                t_logits = teacher(batch.x)
        else:
            t_logits = teacher[batch.index]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # GPU: bf16 math
            s_logits = model(batch.x)
        return kd_loss(s_logits.float(), t_logits.float(), batch.y, config.temperature,
                       config.alpha)

    def check(epoch: int, _step: int, batch: Batch, loss: torch.Tensor) -> None:
        nonlocal total
        total = total + loss.detach() * len(batch.index)  # no host sync per step

    def finite(epoch: int) -> float:
        """This epoch's mean loss so far: the one host synchronisation of an epoch."""
        mean = float(total) / n
        if not math.isfinite(mean):
            raise TrialDiverged(f"non-finite distillation loss at epoch {epoch}")
        return mean

    def report(epoch: int) -> None:
        nonlocal total
        mean = finite(epoch)
        if on_epoch is not None:
            on_epoch(epoch, mean)
        total = 0.0

    train_loop(student, train, loss_fn, opt, sched, epochs=epochs, batch_size=config.batch_size,
               generator=generator, on_batch=check, on_epoch=report, max_steps=max_steps)
    finite(epochs)  # a run that ends mid-pass (``steps``) is checked too
    return student.eval()
