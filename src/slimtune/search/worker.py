"""What every Ray task of a search does first: take its share of the machine, load the
data set and the teacher (both named by the search's settings, through the trust rule)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from slimtune.data.datasets import Splits, load_dataset
from slimtune.models.train import logits_of
from slimtune.models.zoo import build_model
from slimtune.trust import Trust

__all__ = ["worker_device", "set_up", "teacher_logits"]


def worker_device(threads: int, gpu_fraction: float) -> torch.device:
    """Set up a Ray task's process for its share: ``threads`` torch threads (its CPUs), and
    its GPU share when it has one, else the CPU."""
    torch.set_num_threads(max(1, threads))
    if gpu_fraction > 0 and torch.cuda.is_available():
        # Ray does not isolate GPU memory between fractional trials: keep to our share
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
        return torch.device("cuda")
    return torch.device("cpu")


def set_up(spec: Any, teacher_state: dict[str, torch.Tensor]
           ) -> tuple[torch.device, Splits, nn.Module]:
    """(device, data set, teacher on the device in eval mode) for a task's ``spec`` (a
    :class:`~slimtune.search.trial.TrialSpec` or :class:`~slimtune.search.guided.ProbeSpec`:
    its ``model``, ``data``, ``data_dir``, ``subset``, ``val_subset``, ``threads``,
    ``gpu_fraction`` and ``trust``)."""
    device = worker_device(spec.threads, spec.gpu_fraction)
    trust, named_by = Trust.of(spec.trust), "the search's settings"
    data = load_dataset(spec.data, spec.data_dir, spec.subset, spec.val_subset, trust=trust,
                        source=named_by)
    teacher = build_model(spec.model, data.num_classes, data.input_shape, trust=trust,
                          source=named_by)
    teacher.load_state_dict(teacher_state)
    teacher.to(device).eval()
    return device, data, teacher


#: the teacher's logits on the training split, per process (Ray reuses its workers): every
#: job of a search distils from the same teacher on the same split
_LOGITS: dict[tuple[Any, ...], torch.Tensor] = {}


def teacher_logits(t: Any, teacher: torch.nn.Module,
                    teacher_state: dict[str, torch.Tensor], train: Any
                    ) -> torch.nn.Module | torch.Tensor:
    """``teacher``'s logits on ``train`` (computed once per process and teacher, for the
    task ``t`` of a search: its data settings), or the teacher itself for a split that
    augments (new inputs every epoch)."""
    if train.augments:
        return teacher
    digest = hashlib.sha1()
    for name, v in teacher_state.items():
        digest.update(name.encode())
        digest.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    key = (t.model, t.data, t.data_dir, t.subset, t.val_subset, digest.hexdigest(),
           str(next(teacher.parameters()).device))
    if key not in _LOGITS:
        _LOGITS.clear()
        _LOGITS[key] = logits_of(teacher, train)
    return _LOGITS[key]
