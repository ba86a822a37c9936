"""One trial: compress the teacher by a plan, distil, export, measure. Pure; no Ray here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from slimtune.compress.apply import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.data.datasets import load_dataset
from slimtune.export.artifact import decode, encode, stored_weights
from slimtune.models.zoo import build_model
from slimtune.objectives.accuracy import accuracy
from slimtune.objectives.flops import count_flops
from slimtune.objectives.latency import latency_ms
from slimtune.spaces.plan import CompressionPlan

__all__ = ["TrialSpec", "run_trial", "measure"]


@dataclass(frozen=True)
class TrialSpec:
    model: str
    data: str
    plan: dict[str, Any]
    epochs: int
    lr: float
    batch_size: int
    seed: int
    threads: int = 1
    gpu_fraction: float = 0.0  # share of one GPU this trial may use (0 = run on CPU)
    latency: bool = False  # also measure batch-1 latency of the exported model
    data_dir: str | None = None
    subset: int | None = None


def measure(
    student: torch.nn.Module,
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    plan: CompressionPlan,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    latency_device: torch.device | str | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Export ``student`` and measure the artifact itself: the numbers a user will get.

    ``flops`` is the effective count (the objective); ``dense_flops`` and ``bitops`` are
    reported beside it. With ``latency_device``, also ``latency_ms`` there; with ``test``
    (reports only, never the search), also ``test_accuracy``.
    """
    blob = encode(student, model_name, num_classes, input_shape, plan)
    exported, header = decode(blob)
    report = count_flops(exported, input_shape, stored_weights(exported, header.plan))
    out: dict[str, Any] = {
        "accuracy": accuracy(exported, x_val, y_val),
        "size_bytes": len(blob),
        "flops": report.effective,
        "dense_flops": report.dense,
        "bitops": report.bitops,
        "artifact": blob,
    }
    if test is not None:
        out["test_accuracy"] = accuracy(exported, *test)
    if latency_device is not None:
        out["latency_ms"] = latency_ms(exported, input_shape, latency_device)
    return out


def run_trial(spec: TrialSpec, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, spec.threads))
    torch.manual_seed(spec.seed)
    device = torch.device("cpu")
    if spec.gpu_fraction > 0 and torch.cuda.is_available():
        device = torch.device("cuda")
        # Ray does not isolate GPU memory between fractional trials: keep to our share
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec.gpu_fraction))
    data = load_dataset(spec.data, spec.data_dir, spec.subset)
    train = data.to(device)
    teacher = build_model(spec.model, data.num_classes, data.input_shape)
    teacher.load_state_dict(teacher_state)
    teacher.to(device).eval()
    plan = CompressionPlan.from_dict(spec.plan)
    student = apply(teacher, plan, data.input_shape)
    cfg = DistillConfig(
        temperature=plan.temperature, alpha=plan.alpha, epochs=spec.epochs,
        lr=spec.lr, batch_size=spec.batch_size,
    )
    distill(student, teacher, train.x_train, train.y_train, cfg,
            augment=train.augment_batch if train.augment else None,
            generator=torch.Generator().manual_seed(spec.seed))
    out = measure(student, spec.model, data.num_classes, data.input_shape, plan,
                  data.x_val, data.y_val, latency_device=device if spec.latency else None)
    out["seconds"] = time.perf_counter() - t0
    return out
