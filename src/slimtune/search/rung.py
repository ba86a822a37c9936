"""One job of the multi-fidelity search: take a plan from one rung of the fidelity ladder
to the next. Pure; no Ray, no Optuna here.

A plan's first job builds its compressed student from the teacher and, on a ladder whose
first rung is 0 epochs, re-estimates its BatchNorm statistics (rung 0: no gradient step).
Each later job loads the student's weights saved by the rung below (a state dict the
driver kept and sends with the job, read with ``weights_only=True``) and fine-tunes on,
steps ``start`` to ``stop`` of the one cosine schedule laid out over the top rung's
epochs, so the rungs of a plan add up to one uninterrupted schedule (Adam's moments
restart at each rung). The top rung's job exports the artifact, measured as every trial
is (:class:`Measured`).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimtune.compress.apply import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.compress.recalibrate import recalibrate_batchnorm
from slimtune.models.train import accuracy
from slimtune.objectives.measure import RECORDED, Measured
from slimtune.objectives.table import objectives_of
from slimtune.search.trial import TrialSpec
from slimtune.search.worker import set_up, teacher_logits
from slimtune.spaces.plan import CompressionPlan

__all__ = ["RungSpec", "run_rung", "state_path"]


@dataclass(frozen=True)
class RungSpec:
    """Take ``trial.plan`` from ``start`` to ``stop`` fine-tune epochs (``trial.epochs``:
    the top rung's, over which the schedule is laid out)."""

    trial: TrialSpec
    rung: int
    start: float
    stop: float
    top: bool  # the last rung: export the artifact
    recalibrate: bool = True  # a student built from the teacher gets rung 0's BatchNorm pass
    #: the weights at ``start``, as ``torch.save`` wrote them (None: build from the
    #: teacher); they travel with the job, so any node of the cluster can continue a plan
    state_in: bytes | None = None
    state_out: bool = False  # return the weights at ``stop`` (the result's ``state``)
    #: the plan's costs measured at its first rung (size_bytes, flops, ...): a job below
    #: the top then skips encoding the student again (they cannot change)
    costs: dict[str, float] | None = None


def state_path(run_dir: Path, plan: int, rung: int) -> Path:
    """Where a plan's student is kept between rungs."""
    return run_dir / "trials" / f"plan-{plan:05d}.rung-{rung}.pt"


def run_rung(spec: RungSpec, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run one rung job. The result's ``status``: ``complete``, or ``over_budget`` (a plan
    above ``--max-size``/``--max-flops``: not trained, ``accuracy`` is before any step)."""
    t = spec.trial
    t0, began = time.perf_counter(), time.time()
    device, data, teacher = set_up(t, teacher_state)
    where = {"threads": torch.get_num_threads(), "device": str(device), "seed": t.seed}
    train = data.to(device)
    plan = CompressionPlan.from_dict(t.plan)
    student = apply(teacher, plan, data.input_shape)
    measured = None
    if spec.costs is not None and not spec.top:
        costs: dict[str, Any] = dict(spec.costs)
    else:
        measured = Measured.of(student, t.model, data.num_classes, data.input_shape, plan,
                               data.val, device, latency=t.latency,
                               calibrate=data.train)  # size, FLOPs: exact before training
        costs = {"size_bytes": len(measured.blob), "fixed_size_bytes": measured.fixed_size,
                 "flops": measured.flops.effective,
                 "dense_flops": measured.flops.dense, "bitops": measured.flops.bitops}
        for o in objectives_of(t.objectives):  # the other costs (stored weights, latency)
            if o.name not in RECORDED and o.name != "accuracy":
                costs[o.metric] = o.measure(measured)
    size, flops = costs["fixed_size_bytes"], costs["flops"]  # the size's upper bound
    over = (t.max_size is not None and size > t.max_size) or (
        t.max_flops is not None and flops > t.max_flops)
    if spec.state_in is not None:
        student.load_state_dict(torch.load(io.BytesIO(spec.state_in), map_location=device,
                                           weights_only=True))
    elif spec.recalibrate:
        recalibrate_batchnorm(student, train.train,
                              generator=torch.Generator().manual_seed(t.seed))
    if not over and spec.stop > spec.start:
        cfg = DistillConfig(temperature=plan.temperature, alpha=plan.alpha, epochs=t.epochs,
                            lr=t.lr, batch_size=t.batch_size)
        per_epoch = math.ceil(len(train.train) / t.batch_size)
        steps = (round(spec.start * per_epoch), round(spec.stop * per_epoch))
        torch.manual_seed(t.seed * 31 + spec.rung)  # dropout's draws, whatever ran before
        distill(student, teacher_logits(t, teacher, teacher_state, train.train), train.train,
                cfg, steps=steps,
                generator=torch.Generator().manual_seed(t.seed * 31 + spec.rung))
    out: dict[str, Any] = {"status": "over_budget" if over else "complete", **costs,
                           "rung": spec.rung, "epochs": spec.stop,
                           "epochs_trained": 0.0 if over else spec.stop - spec.start}
    if spec.top and not over:
        assert measured is not None
        final = measured.again(student)
        out.update(final.results(t.objectives), artifact=final.blob)
    else:
        out["accuracy"] = accuracy(student, train.val)
        if spec.state_out and not over:
            buf = io.BytesIO()
            torch.save({k: v.cpu() for k, v in student.state_dict().items()}, buf)
            out["state"] = buf.getvalue()
    out.update(seconds=time.perf_counter() - t0, ran=[began, time.time()], **where)
    return out
