"""One trial: compress the teacher by a plan, distil, export, measure. Pure; no Ray here.

Before any training the trial re-estimates the compressed student's BatchNorm
statistics (compress/recalibrate.py: the teacher's do not fit a pruned, factorized or
quantized student) and encodes it, untrained: its FLOPs and its fixed-width size (an
upper bound of the entropy-coded file, whatever the training does) are already final
(fine-tuning keeps masks, bits and shapes), so a plan over the size or FLOPs budget
stops there. The size on the front is the file's after fine-tuning. During the fine-tune
it measures validation accuracy after every epoch and stops early when a finished trial
that is no larger and needs no more FLOPs beats it by more than a margin that shrinks as
epochs pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from slimtune.compress.apply import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.compress.recalibrate import recalibrate_batchnorm
from slimtune.data.split import Split, as_split
from slimtune.objectives.accuracy import accuracy
from slimtune.objectives.dominance import dominates
from slimtune.objectives.latency import LatencyConfig
from slimtune.objectives.measure import Measured
from slimtune.objectives.table import objectives_of
from slimtune.search.worker import set_up, teacher_logits, worker_device
from slimtune.spaces.plan import CompressionPlan

__all__ = ["TrialSpec", "run_trial", "measure", "early_stop_margin", "dominator",
           "worker_device", "early_stop_axes", "budget_size"]

#: a finished trial, as early stopping sees it: (its number, metric -> value)
Finished = tuple[int, dict[str, float]]


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
    #: the study's objectives (``--objectives``); the recorded ones are always measured
    objectives: tuple[str, ...] = ("accuracy", "size", "flops")
    data_dir: str | None = None
    subset: int | None = None
    val_subset: int | None = None
    max_size: int | None = None  # bytes; a plan above it is not trained
    max_flops: int | None = None  # effective MACs; a plan above it is not trained
    early_stop: bool = True
    #: finished feasible trials (see :data:`Finished`), for early stopping
    front: tuple[Finished, ...] = ()
    #: user modules the search trusts (its model and data set may be user code)
    trust: tuple[str, ...] = ()
    #: how the latency objective times a model (``--latency-*``)
    latency: LatencyConfig = LatencyConfig()


def budget_size(out: dict[str, Any]) -> int:
    """The size a trial's results are held to ``--max-size`` by: the fixed-width size, an
    upper bound known before training (results from before it existed: ``size_bytes``)."""
    return int(out.get("fixed_size_bytes", out["size_bytes"]))


def early_stop_margin(epoch: int, epochs: int) -> float:
    """How far below a dominating finished trial a trial may be after ``epoch`` of
    ``epochs`` and still go on: wide after the first epoch (accuracy still climbs fast),
    narrow near the end. Chosen from the per-epoch curves of the default search
    (docs/DESIGN-NOTES.md)."""
    left = (epochs - epoch) / max(epochs, 1)
    return 0.03 + 0.6 * left


def early_stop_axes(objectives: tuple[str, ...]) -> list[str]:
    """The metrics early stopping compares on: the objectives known before training (size,
    FLOPs, stored weights), then accuracy."""
    return [o.metric for o in objectives_of(objectives) if o.before_training] + ["accuracy"]


def dominator(front: tuple[Finished, ...], mine: dict[str, float], axes: list[str],
              margin: float) -> tuple[int, float] | None:
    """The first finished trial that dominates ``mine`` on ``axes`` (accuracy last) with
    ``margin`` added to its accuracy: (its number, its accuracy), else None."""
    directions = ["maximize" if a == "accuracy" else "minimize" for a in axes]
    here = [mine[a] for a in axes[:-1]] + [mine["accuracy"] + margin]
    for number, values in front:
        if values["accuracy"] > here[-1] and dominates([values[a] for a in axes], here,
                                                       directions):
            return number, values["accuracy"]
    return None


def measure(
    student: torch.nn.Module, model_name: str, num_classes: int,
    input_shape: tuple[int, ...], plan: CompressionPlan, val: Split | torch.Tensor,
    y_val: torch.Tensor | None = None, *, objectives: tuple[str, ...] = (),
    latency_device: torch.device | str | None = None, test: Split | None = None,
) -> dict[str, Any]:
    """What a trial records of ``student``, measured on its artifact (``artifact``: the
    bytes): :class:`~slimtune.objectives.measure.Measured` as one call. ``latency_device``
    adds the latency objective, timed there."""
    if latency_device is not None:
        objectives = (*objectives, "latency")
    m = Measured.of(student, model_name, num_classes, input_shape, plan,
                    as_split(val, y_val), latency_device or "cpu")
    return {**m.results(objectives, test=test), "artifact": m.blob}


class _Stop(Exception):
    def __init__(self, epoch: int, acc: float, by: tuple[int, float]) -> None:
        super().__init__(epoch)
        self.epoch, self.acc, self.by = epoch, acc, by


def run_trial(spec: TrialSpec, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run one trial. The result's ``status``: ``complete``, ``pruned`` (stopped early:
    ``accuracy`` is the last epoch's) or ``over_budget`` (not trained: ``accuracy`` is the
    compressed model's before any fine-tune)."""
    t0 = time.perf_counter()
    began = time.time()
    device, data, teacher = set_up(spec, teacher_state)
    where = {"threads": torch.get_num_threads(), "device": str(device),  # as it ran
             "seed": spec.seed}
    train = data.to(device)
    plan = CompressionPlan.from_dict(spec.plan)
    student = apply(teacher, plan, data.input_shape)
    # before it is measured untrained (an over-budget plan's accuracy) and before it trains
    recalibrate_batchnorm(student, train.train, generator=torch.Generator().manual_seed(spec.seed))

    # FLOPs, stored weights and the size's upper bound are final before training: a plan
    # over budget stops
    measured = Measured.of(student, spec.model, data.num_classes, data.input_shape, plan,
                           data.val, device, latency=spec.latency, calibrate=data.train)
    size, flops = len(measured.blob), measured.flops.effective
    if (spec.max_size is not None and measured.fixed_size > spec.max_size) or (
        spec.max_flops is not None and flops > spec.max_flops
    ):
        out = {"status": "over_budget", **measured.results(spec.objectives),
               "epochs_trained": 0, "curve": []}
        out["seconds"] = time.perf_counter() - t0
        out["ran"] = [began, time.time()]
        return {**out, **where}

    curve: list[float] = []
    val = train.val
    axes = early_stop_axes(spec.objectives)
    known = {o.metric: o.measure(measured) for o in objectives_of(spec.objectives)
             if o.before_training}

    def on_epoch(epoch: int, _loss: float) -> None:
        acc = accuracy(student, val)
        student.train()
        curve.append(acc)
        if spec.early_stop and epoch < spec.epochs:
            by = dominator(spec.front, {**known, "accuracy": acc}, axes,
                           early_stop_margin(epoch, spec.epochs))
            if by is not None:
                raise _Stop(epoch, acc, by)

    cfg = DistillConfig(
        temperature=plan.temperature, alpha=plan.alpha, epochs=spec.epochs,
        lr=spec.lr, batch_size=spec.batch_size,
    )
    torch.manual_seed(spec.seed)  # dropout's draws: from the seed, whatever ran before
    try:
        distill(student, teacher_logits(spec, teacher, teacher_state, train.train), train.train,
                cfg,
                generator=torch.Generator().manual_seed(spec.seed), on_epoch=on_epoch)
    except _Stop as stop:
        return {
            "status": "pruned", "accuracy": stop.acc, "size_bytes": size,
            "fixed_size_bytes": measured.fixed_size, "flops": flops,
            "dense_flops": measured.flops.dense, "bitops": measured.flops.bitops,
            "epochs_trained": stop.epoch, "curve": curve, "dominated_by": stop.by[0],
            "dominator_accuracy": stop.by[1], "seconds": time.perf_counter() - t0,
            "ran": [began, time.time()], **where,
        }
    final = measured.again(student)
    out = {**final.results(spec.objectives), "artifact": final.blob}
    out.update(status="complete", epochs_trained=spec.epochs, curve=curve,
               seconds=time.perf_counter() - t0, ran=[began, time.time()], **where)
    return out
