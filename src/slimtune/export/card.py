"""``export``: copy a trial's artifact out of a run, check it, and write its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimtune.data.datasets import load_dataset
from slimtune.errors import RunDirError
from slimtune.export.artifact import decode, save, stored_weights
from slimtune.objectives.accuracy import accuracy
from slimtune.objectives.flops import count_flops

__all__ = ["export", "card_path", "evaluate"]


def card_path(path: str | Path) -> Path:
    """The model card beside an exported file: the same path with ``.json`` as suffix."""
    return Path(path).with_suffix(".json")


def evaluate(
    path: str | Path, data: str | None = None, split: str = "test",
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy of an exported file on a split (data set, its directory and subset from the
    model card beside the file unless given)."""
    from slimtune.export.artifact import _read

    raw = _read(path)
    model, header = decode(raw)
    card: dict[str, Any] = {}
    if card_path(path).is_file():
        try:
            card = json.loads(card_path(path).read_text())
        except ValueError:
            card = {}
    if data is None:
        data = card.get("dataset", "digits")
    same = data == card.get("dataset")
    if data_dir is None and same:
        data_dir = card.get("data_dir")
    ds = load_dataset(data, data_dir, card.get("subset") if same else None,
                      card.get("val_subset") if same else None)
    x, y = ds.split(split)
    if tuple(x.shape[1:]) != header.input_shape:
        raise RunDirError(
            f"{path} takes inputs of shape {header.input_shape}, but `{data}` has "
            f"{tuple(x.shape[1:])}; pass the dataset it was made for with --data"
        )
    return {"accuracy": accuracy(model, x, y), "dataset": data, "split": split,
            "examples": len(y)}


def export(
    run_dir: str | Path, trial: int, out: str | Path, *, onnx: bool = False,
    storage: str | None = None, study_name: str = "slimtune",
) -> dict[str, Any]:
    """Write trial ``trial`` of ``run_dir`` to ``out`` and its model card beside it.

    With ``onnx=True`` also ``out`` with suffix ``.onnx``: the student with dequantized
    float32 weights, checked against PyTorch with onnxruntime (the result is in the card).
    Returns the card. The test accuracy in the card is measured on the file's own bytes.
    """
    from slimtune.search.study import open_run

    run = open_run(run_dir, storage=storage, study_name=study_name)
    frozen = {t.number: t for t in run.study.trials}
    if trial not in frozen:
        raise RunDirError(f"trial {trial} is not in {run.dir} (it has {len(frozen)} trials)")
    t = frozen[trial]
    src = run.artifact_path(trial)
    if t.state.name != "COMPLETE" or t.user_attrs.get("status") == "over_budget":
        raise RunDirError(
            f"trial {trial} of {run.dir} did not complete; pick one from `slimtune front`"
        )
    if not src.is_file():
        raise RunDirError(
            f"{src} is missing: trial {trial} ran on {t.user_attrs.get('host', 'another machine')}"
            "; copy that machine's run directory `trials` folder here (or share the run "
            "directory between machines)"
        )
    raw = src.read_bytes()
    model, header = decode(raw)
    meta = run.meta
    cfg = meta["config"]
    ds = load_dataset(cfg["data"], cfg.get("data_dir"), cfg.get("subset"), cfg.get("val_subset"))
    test_acc = accuracy(model, ds.x_test, ds.y_test)
    val_acc = accuracy(model, ds.x_val, ds.y_val)
    report = count_flops(model, header.input_shape, stored_weights(model, header.plan))
    macs = report.effective
    teacher = meta["teacher"]
    out = Path(out)
    save(out, raw)
    card = {
        "slimtune_version": meta.get("version"),
        "dataset": cfg["data"],
        "data_dir": cfg.get("data_dir"),
        "subset": cfg.get("subset"),
        "val_subset": cfg.get("val_subset"),
        "model": header.model,
        "trial": trial,
        "run_dir": str(run.dir),
        "input_shape": list(header.input_shape),
        "num_classes": header.num_classes,
        "plan": header.plan.to_dict(),
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "size_bytes": len(raw),
        "flops": macs,
        "dense_flops": report.dense,
        "bitops": report.bitops,
        "teacher": teacher,
        "ratios": {
            "size_x_smaller": teacher["size_bytes"] / len(raw),
            "flops_x_fewer": teacher["flops"] / macs if macs else None,
            "val_accuracy_relative": val_acc / teacher["accuracy"] if teacher["accuracy"] else None,
            "test_accuracy_relative": (
                test_acc / teacher["test_accuracy"] if teacher["test_accuracy"] else None
            ),
        },
    }
    if onnx:
        from slimtune.export.onnx import export_onnx

        card["onnx"] = export_onnx(model, header.input_shape, out.with_suffix(".onnx"))
    card_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return card
