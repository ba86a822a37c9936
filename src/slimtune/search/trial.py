"""One trial: compress the teacher by a plan, distil, export, measure. Pure; no Ray here.

Before any training the trial encodes the compressed (untrained) student: its size and
FLOPs are already final (fine-tuning keeps masks, bits and shapes), so a plan over the
size or FLOPs budget stops there. During the fine-tune it measures validation accuracy
after every epoch and stops early when a finished trial that is no larger and needs no
more FLOPs beats it by more than a margin that shrinks as epochs pass.
"""

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
from slimtune.trust import NO_TRUST, Trust

__all__ = ["TrialSpec", "run_trial", "measure", "cost", "early_stop_margin", "dominator",
           "worker_device"]


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
    val_subset: int | None = None
    max_size: int | None = None  # bytes; a plan above it is not trained
    max_flops: int | None = None  # effective MACs; a plan above it is not trained
    early_stop: bool = True
    #: (trial number, size_bytes, flops, val accuracy) of finished feasible trials
    front: tuple[tuple[int, int, int, float], ...] = ()
    #: user modules the search trusts (its model and data set may be user code)
    trust: tuple[str, ...] = ()


def early_stop_margin(epoch: int, epochs: int) -> float:
    """How far below a dominating finished trial a trial may be after ``epoch`` of
    ``epochs`` and still go on: wide after the first epoch (accuracy still climbs fast),
    narrow near the end. Chosen from the per-epoch curves of the default search
    (docs/DESIGN-NOTES.md)."""
    left = (epochs - epoch) / max(epochs, 1)
    return 0.03 + 0.6 * left**1.5


def dominator(
    front: tuple[tuple[int, int, int, float], ...], size: int, flops: int, acc: float,
    margin: float,
) -> tuple[int, float] | None:
    """The first finished trial no larger, needing no more FLOPs, and more than ``margin``
    more accurate than (size, flops, acc): (its number, its accuracy), else None."""
    for number, s, f, a in front:
        if s <= size and f <= flops and a > acc + margin:
            return number, a
    return None


class _Stop(Exception):
    def __init__(self, epoch: int, acc: float, by: tuple[int, float]) -> None:
        super().__init__(epoch)
        self.epoch, self.acc, self.by = epoch, acc, by


def cost(
    student: torch.nn.Module, model_name: str, num_classes: int,
    input_shape: tuple[int, ...], plan: CompressionPlan, trust: Trust = NO_TRUST,
) -> tuple[bytes, torch.nn.Module, Any]:
    """The artifact of ``student``, the model decoded from it, and its FLOPs report
    (``trust``: the search's, for a user model)."""
    blob = encode(student, model_name, num_classes, input_shape, plan)
    exported, header = decode(blob, trust=trust, source="the search's settings")
    return blob, exported, count_flops(exported, input_shape,
                                       stored_weights(exported, header.plan))


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
    trust: Trust = NO_TRUST,
) -> dict[str, Any]:
    """Export ``student`` and measure the artifact itself: the numbers a user will get.

    ``flops`` is the effective count (the objective); ``dense_flops`` and ``bitops`` are
    reported beside it. With ``latency_device``, also ``latency_ms`` there; with ``test``
    (reports only, never the search), also ``test_accuracy``.
    """
    blob, exported, report = cost(student, model_name, num_classes, input_shape, plan, trust)
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


def worker_device(threads: int, gpu_fraction: float) -> torch.device:
    """Set up a Ray task's process for its share: ``threads`` torch threads (its CPUs), and
    its GPU share when it has one, else the CPU."""
    torch.set_num_threads(max(1, threads))
    if gpu_fraction > 0 and torch.cuda.is_available():
        # Ray does not isolate GPU memory between fractional trials: keep to our share
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
        return torch.device("cuda")
    return torch.device("cpu")


def run_trial(spec: TrialSpec, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run one trial. The result's ``status``: ``complete``, ``pruned`` (stopped early:
    ``accuracy`` is the last epoch's) or ``over_budget`` (not trained: ``accuracy`` is the
    compressed model's before any fine-tune)."""
    t0 = time.perf_counter()
    began = time.time()
    device = worker_device(spec.threads, spec.gpu_fraction)
    torch.manual_seed(spec.seed)
    where = {"threads": torch.get_num_threads(), "device": str(device),  # as it ran
             "seed": spec.seed}
    trust, named_by = Trust.of(spec.trust), "the search's settings"
    data = load_dataset(spec.data, spec.data_dir, spec.subset, spec.val_subset, trust=trust,
                        source=named_by)
    train = data.to(device)
    teacher = build_model(spec.model, data.num_classes, data.input_shape, trust=trust,
                          source=named_by)
    teacher.load_state_dict(teacher_state)
    teacher.to(device).eval()
    plan = CompressionPlan.from_dict(spec.plan)
    student = apply(teacher, plan, data.input_shape)

    blob, untrained, report = cost(student, spec.model, data.num_classes, data.input_shape,
                                   plan, trust)
    size = len(blob)
    if (spec.max_size is not None and size > spec.max_size) or (
        spec.max_flops is not None and report.effective > spec.max_flops
    ):
        out = {
            "status": "over_budget", "accuracy": accuracy(untrained, data.x_val, data.y_val),
            "size_bytes": size, "flops": report.effective, "dense_flops": report.dense,
            "bitops": report.bitops, "epochs_trained": 0, "curve": [],
        }
        if spec.latency:
            out["latency_ms"] = latency_ms(untrained, data.input_shape, device)
        out["seconds"] = time.perf_counter() - t0
        out["ran"] = [began, time.time()]
        return {**out, **where}

    curve: list[float] = []
    x_val, y_val = train.x_val, train.y_val

    def on_epoch(epoch: int, _loss: float) -> None:
        acc = accuracy(student, x_val, y_val)
        student.train()
        curve.append(acc)
        if spec.early_stop and epoch < spec.epochs:
            by = dominator(spec.front, size, report.effective, acc,
                           early_stop_margin(epoch, spec.epochs))
            if by is not None:
                raise _Stop(epoch, acc, by)

    cfg = DistillConfig(
        temperature=plan.temperature, alpha=plan.alpha, epochs=spec.epochs,
        lr=spec.lr, batch_size=spec.batch_size,
    )
    try:
        distill(student, teacher, train.x_train, train.y_train, cfg,
                augment=train.augment_batch if train.augment else None,
                generator=torch.Generator().manual_seed(spec.seed), on_epoch=on_epoch)
    except _Stop as stop:
        return {
            "status": "pruned", "accuracy": stop.acc, "size_bytes": size,
            "flops": report.effective, "dense_flops": report.dense, "bitops": report.bitops,
            "epochs_trained": stop.epoch, "curve": curve, "dominated_by": stop.by[0],
            "dominator_accuracy": stop.by[1], "seconds": time.perf_counter() - t0,
            "ran": [began, time.time()], **where,
        }
    out = measure(student, spec.model, data.num_classes, data.input_shape, plan,
                  data.x_val, data.y_val, latency_device=device if spec.latency else None,
                  trust=trust)
    out.update(status="complete", epochs_trained=spec.epochs, curve=curve,
               seconds=time.perf_counter() - t0, ran=[began, time.time()], **where)
    return out
