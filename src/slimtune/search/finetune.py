"""``slimtune finetune``: a front point's distillation continued to convergence.

A search fine-tunes each plan briefly (``--epochs``, often on a training subset): enough to
rank plans, not what a user ships. :func:`finetune` takes one front point and

1. rebuilds its student from the teacher and the plan (``compress.apply``: the plan's
   masks, bits and shapes), then starts it from the trial's own weights, read from its
   artifact; re-encoding them gives an artifact of the trial's size, and the rebuilt
   student computes what the trial's file computes (both checked);
2. distils it on the **full** training split of the search's data set for ``epochs``, one
   cosine schedule sized for them, measuring validation accuracy after every epoch;
3. keeps the best epoch by validation accuracy (epoch 0, the search's weights, counts: the
   result is never worse on validation than what it started from);
4. writes a new artifact and model card whose numbers are measured on that artifact; the
   test split is read only there, for the card, once for the search's file and once for
   the new one, side by side.

The card and the study (user attribute ``finetuned``, by trial) record both the
search-time and the converged numbers.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.compress.apply import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, RunDirError
from slimtune.export.artifact import transcode
from slimtune.export.card import card_of, onnx_writer, output_paths, trial_artifact, write_export
from slimtune.export.onnx_options import OnnxOptions
from slimtune.models.teacher import _load_state
from slimtune.models.train import accuracy
from slimtune.models.zoo import build_model
from slimtune.objectives.measure import Measured
from slimtune.ops.quantize import reset_clipping
from slimtune.search.artifact_store import TEACHER_ATTR
from slimtune.search.pareto import pareto_front
from slimtune.search.study import Run
from slimtune.trust import Trust

__all__ = ["FinetuneConfig", "finetune", "student_of"]

#: the largest difference allowed between the rebuilt student's logits and the trial
#: file's (float32 noise of the same arithmetic in another order)
_REBUILD_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int  # distillation epochs over the full training split
    lr: float | None = None  # Adam's learning rate at the start (default: the search's)
    batch_size: int | None = None  # default: the search's
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"`--epochs` must be at least 1, but got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"`--lr` must be greater than 0, but got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"`--batch-size` must be at least 1, but got {self.batch_size}")


def student_of(teacher: nn.Module, plan: Any, input_shape: tuple[int, ...],
               trained: nn.Module) -> nn.Module:
    """The trainable student of ``plan`` (``apply(teacher, plan)``: its parametrizations,
    so masks and bits hold while it trains) with the weights of ``trained``, the same
    student decoded from its artifact (plain modules of the same names)."""
    student = apply(teacher, plan, input_shape)
    source = dict(trained.named_modules())
    for name, module in student.named_modules():
        if ".parametrizations" in f".{name}" or name.startswith("parametrizations"):
            continue  # a knob's parametrization: its masks are the plan's already
        other = source.get(name)
        params = dict(module.named_parameters(recurse=False))
        buffers = dict(module.named_buffers(recurse=False))
        parametrized = getattr(module, "parametrizations", None)
        if other is None:
            if params or buffers or parametrized is not None:
                raise RunDirError(f"the artifact has no module `{name}`, which the plan's "
                                  "student has: it was not made by this plan")
            continue
        with torch.no_grad():
            if parametrized is not None:
                for pname, plist in parametrized.items():
                    plist.original.copy_(getattr(other, pname))
            for pname, p in params.items():
                p.copy_(getattr(other, pname))
            for bname, b in buffers.items():
                b.copy_(getattr(other, bname))
    return reset_clipping(student)  # the decoded grid: what the file computes


def finetune(
    run: Run, trial: int, out: str | Path, config: FinetuneConfig, *, onnx: Any = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
    trust_module: str | list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune front point ``trial`` of ``run`` (opened writable) to convergence and
    write it to ``out`` with its model card beside it; returns the card.
    ``on_epoch(epoch, epochs, loss, val_accuracy)`` after every epoch."""
    options = OnnxOptions.of(onnx)
    paths = output_paths(out, options)
    trust = Trust.of(trust_module)
    t, searched, header, raw, src = trial_artifact(run, trial, trust)
    front = [p.trial for p in pareto_front(run.study)]
    if trial not in front:
        raise RunDirError(f"trial {trial} of {run.dir} is not on the front (its trials: "
                          f"{', '.join(map(str, front)) or 'none'}); pick one from "
                          "`slimtune front`")
    cfg = run.meta["config"]
    source = f"the study of {run.dir}"
    data = load_dataset(cfg["data"], cfg.get("data_dir"), trust=trust, source=source)
    if tuple(data.input_shape) != tuple(header.input_shape):
        raise RunDirError(f"{src} takes inputs of shape {header.input_shape}, but the full "
                          f"`{cfg['data']}` has {data.input_shape}")
    teacher = build_model(cfg["model"], data.num_classes, data.input_shape, trust=trust,
                          source=source)
    _load_teacher(run, teacher)
    plan = header.plan
    student = student_of(teacher, plan, data.input_shape, searched)
    _check_rebuilt(student, searched, data, src)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    splits = data.to(device)
    student.to(device)
    teacher.to(device)
    # the teacher on the same full splits as the converged student (the run's numbers may
    # be a subset's)
    teacher_full = {**run.teacher, "accuracy": accuracy(teacher, splits.val),
                    "test_accuracy": accuracy(teacher, splits.test), "splits": "full"}
    curve = [accuracy(student, splits.val)]  # epoch 0: the search's weights
    best = (curve[0], 0, copy.deepcopy(student.state_dict()))
    losses: list[float] = []

    def epoch_done(epoch: int, loss: float) -> None:
        nonlocal best
        acc = accuracy(student, splits.val)
        student.train()
        curve.append(acc)
        losses.append(loss)
        if acc > best[0]:
            best = (acc, epoch, copy.deepcopy(student.state_dict()))
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, loss, acc)

    lr = config.lr if config.lr is not None else float(cfg.get("lr", 1e-3))
    batch = config.batch_size or int(cfg.get("batch_size", 64))
    torch.manual_seed(config.seed)
    distill(student, teacher, splits.train,
            DistillConfig(temperature=plan.temperature, alpha=plan.alpha,
                          epochs=config.epochs, lr=lr, batch_size=batch),
            generator=torch.Generator().manual_seed(config.seed), on_epoch=epoch_done)
    student.load_state_dict(best[2])
    student.cpu().eval()
    seconds = time.perf_counter() - t0

    measured = Measured.of(student, header.model, header.num_classes, header.input_shape,
                           plan, data.val)
    fixed = len(transcode(raw, entropy=False, structure=searched))  # same plan, same masks
    if measured.fixed_size != fixed:
        raise RunDirError(f"the fine-tuned artifact is {measured.fixed_size:,} bytes "
                          f"fixed-width but the trial's is {fixed:,}: the plan changed (a bug; "
                          "please report)")
    results = measured.results(test=data.test)  # the test split: read here only
    search_numbers = {"val_accuracy": float(t.user_attrs["val_accuracy"]),
                      "val_accuracy_full": curve[0],
                      "test_accuracy_full": accuracy(searched, data.test),
                      "epochs": t.user_attrs.get("epochs", cfg.get("epochs")),
                      "subset": cfg.get("subset")}
    record = {"epochs": config.epochs, "best_epoch": best[1], "lr": lr, "batch_size": batch,
              "seed": config.seed, "train_examples": len(data.train),
              "val_curve": curve, "loss_curve": losses, "seconds": round(seconds, 1),
              "device": str(device), "search": search_numbers}
    card = card_of(run, trial, header, measured.blob, measured.model,
                   val_accuracy=float(results["accuracy"]),
                   test_accuracy=float(results["test_accuracy"]),
                   flops=int(results["flops"]), dense_flops=int(results["dense_flops"]),
                   bitops=int(results["bitops"]),
                   data={"dataset": cfg["data"], "data_dir": cfg.get("data_dir"),
                         "subset": None, "val_subset": None}, teacher=teacher_full)
    card["finetune"] = record
    write_export(paths, measured.blob, card,
                 onnx_writer(measured.model, header, options, out, data.train, data.test))
    done = dict(run.study.user_attrs.get("finetuned", {}))
    done.setdefault(str(trial), []).append({
        **{k: v for k, v in record.items() if k not in ("loss_curve",)},
        "out": str(Path(out).resolve()), "val_accuracy": card["val_accuracy"],
        "test_accuracy": card["test_accuracy"], "size_bytes": card["size_bytes"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    run.study.set_user_attr("finetuned", done)
    return card


def _load_teacher(run: Run, teacher: nn.Module) -> None:
    """The run's teacher weights: ``RUN_DIR/teacher.pt``, else the study's teacher artifact
    from the store (on a machine without the run directory)."""
    teacher_pt = run.dir / "teacher.pt"
    if teacher_pt.is_file():
        _load_state(teacher, teacher_pt)
        return
    ref = run.study.user_attrs.get(TEACHER_ATTR)
    if ref is None:
        raise RunDirError(f"{teacher_pt} is missing and the study stores no teacher in an "
                          "artifact store: the fine-tune distils from the run's teacher")
    with tempfile.TemporaryDirectory(prefix="slimtune-teacher-") as tmp:
        path = Path(tmp) / "teacher.pt"
        run.store.fetch_teacher(ref, path)
        _load_state(teacher, path)


def _check_rebuilt(student: nn.Module, searched: nn.Module, data: Any, src: str) -> None:
    """The rebuilt student computes what the trial's file does (on a few validation
    examples), else a :class:`RunDirError`: its plan does not rebuild it."""
    batch = next(iter(data.val.batches(64)))
    x = batch.x.cpu()
    student.eval()
    with torch.no_grad():
        diff = float((student(x) - searched.eval()(x)).abs().max())
    if not diff <= _REBUILD_TOLERANCE:
        raise RunDirError(f"the student rebuilt from the plan of {src} differs from the file "
                          f"by {diff:.3g} in its logits (more than {_REBUILD_TOLERANCE}): the "
                          "run's teacher.pt is not the teacher the trial compressed")
