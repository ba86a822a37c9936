"""The front as a table, as plain data (:func:`table_info`): ratios to the teacher,
validation accuracy, test accuracy where a converged fine-tune (``slimtune finetune``,
recorded in the study) or a model card measured it, and the exact export command."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, NamedTuple

from slimtune.inmemory import is_memory
from slimtune.search.study import Run
from slimtune.viz.front import FrontInfo, as_run, front_info, number

__all__ = ["FrontRow", "HeldOutAccuracy", "table_info", "rows_of", "export_command",
           "command_of", "held_out_accuracies"]


class HeldOutAccuracy(NamedTuple):
    accuracy: float
    source: str  # e.g. "finetune, 5 epochs" or "card student.json"


class FrontRow(NamedTuple):
    trial: int
    size_bytes: int
    bits_per_weight: float | None  # bits of the file per weight it stores
    x_smaller: float
    flops: int
    x_fewer: float
    val_accuracy: float
    val_relative: float | None  # validation accuracy / the teacher's
    test: HeldOutAccuracy | None
    command: str


def export_command(run_dir: Path, trial: int, *, shared_storage: bool = False,
                   study_name: str = "slimtune", python: bool = False) -> str:
    """The ``slimtune export`` command for ``trial``, quoted for a shell (a ``--storage``
    URL is written ``URL``: it may hold a password). ``python``: the model was given as
    a Python object, which only the search's session holds: the call to make there."""
    if python:
        extra = "" if study_name == "slimtune" else f", study_name={study_name!r}"
        extra += ", storage=URL" if shared_storage else ""
        return (f"slimtune.export({str(run_dir)!r}, {trial}, 'student-{trial}.slim'{extra})"
                "  # in the Python session that ran the search")
    cmd = f"slimtune export {shlex.quote(str(run_dir))} --trial {trial} " \
          f"--out student-{trial}.slim"
    if shared_storage:
        cmd += " --storage URL"
    if study_name != "slimtune":
        cmd += f" --study-name {shlex.quote(study_name)}"
    return cmd


def held_out_accuracies(finetuned: Any, cards: list[dict[str, Any]] = ()  # type: ignore[assignment]
                    ) -> dict[int, HeldOutAccuracy]:
    """Trial -> the test accuracy measured on a file made from it: the latest converged
    fine-tune the study records (its ``finetuned`` attribute), else a model card's (the
    cards of ``cards`` are read in order, a later one wins)."""
    out: dict[int, HeldOutAccuracy] = {}
    for card in cards:
        trial, acc = card.get("trial"), number(card.get("test_accuracy"))
        if isinstance(trial, int) and not isinstance(trial, bool) and acc is not None:
            tune = card.get("finetune")
            how = (f"finetune, {tune.get('epochs')} epochs" if isinstance(tune, dict)
                   else "exported")
            out[trial] = HeldOutAccuracy(acc, f"model card ({how})")
    if isinstance(finetuned, dict):
        for key, records in finetuned.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(records, list)):
                continue
            for r in records:
                acc = number(r.get("test_accuracy")) if isinstance(r, dict) else None
                if acc is not None:
                    epochs = number(r.get("epochs"))
                    out[int(key)] = HeldOutAccuracy(
                        acc, f"slimtune finetune, {epochs:g} epochs" if epochs is not None
                        else "slimtune finetune")
    return out


def table_info(run: str | Path | Run, front: FrontInfo | None = None,
               cards: list[dict[str, Any]] = ()  # type: ignore[assignment]
               ) -> list[FrontRow]:
    """One row per front point of ``run``, smallest first; test accuracy from the study's
    fine-tunes and the model ``cards`` given (:func:`held_out_accuracies`). ``front``:
    the run's :func:`front_info` when already read."""
    run = as_run(run)
    front = front or front_info(run)
    return rows_of(front, held_out_accuracies(run.study.user_attrs.get("finetuned"),
                                              list(cards)))


def rows_of(front: FrontInfo, tests: dict[int, HeldOutAccuracy]) -> list[FrontRow]:
    """The table's rows for ``front`` with the test accuracies ``tests``."""
    t = front.teacher
    return [FrontRow(p.trial, p.size_bytes, p.bits_per_weight, front.x_smaller(p), p.flops,
                     front.x_fewer(p),
                     p.accuracy, p.accuracy / t["accuracy"] if t["accuracy"] else None,
                     tests.get(p.trial),
                     command_of(front, p.trial))
            for p in front.front]


def command_of(front: FrontInfo, trial: int) -> str:
    """:func:`export_command` for a trial of ``front``'s run."""
    return export_command(front.run_dir, trial, shared_storage=front.shared_storage,
                          study_name=front.study_name, python=is_memory(front.model))
