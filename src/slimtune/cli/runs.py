"""The commands that read a run: `front`, `report`, `export`, `finetune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from slimtune.cli.common import (
    _D,
    _fmt_bytes,
    _fmt_count,
    _onnx_opt,
    _out_opt,
    _progress,
    _q,
    _run_dir,
    _run_dir_arg,
    _storage_args,
    _storage_opt,
    _store_opt,
    _study_opt,
    _trust_opt,
    cli,
    err,
)


def _write_report(run_dir: Path, storage: str | None, study_name: str,
                  out: Path | None = None) -> str:
    """Write the run's HTML report (RUN_DIR/report.html unless ``out``); a run directory
    we may not write to (a read-only results share) is not an error."""
    from slimtune.api import report
    from slimtune.errors import OutputError

    try:
        return f"report: {report(run_dir, out, storage=storage, study_name=study_name)}"
    except OutputError as exc:
        if out is not None:
            raise
        return f"report not written ({exc}); choose a place with `slimtune report --out PATH`"


def _print_front(run_dir: Path, storage: str | None = None,
                 study_name: str = _D.study_name, html_path: Path | None = None) -> None:
    from slimtune.api import front_info, suggested_export
    from slimtune.units import bits_per_weight

    info = front_info(run_dir, storage=storage, study_name=study_name)
    t = info.teacher
    table = Table(title=f"Pareto front of {run_dir} ({info.model} on {info.dataset}; "
                        "accuracy on the validation split)")
    cols = ["trial", "accuracy", "size", "bits/w", "x smaller", "FLOPs", "x fewer", "dense",
            "BOPs"]
    if info.has_latency:
        cols.append("latency")
    for col in cols:
        table.add_column(col, justify="right")

    def row(name: str, p: Any, xs: str, xf: str, style: str | None = None) -> None:
        bpw = bits_per_weight(p["size_bytes"], p.get("stored_weights"))
        cells = [name, f"{p['accuracy']:.4f}", _fmt_bytes(p["size_bytes"]),
                 f"{bpw:.2f}" if bpw is not None else "-", xs,
                 _fmt_count(p["flops"]), xf, _fmt_count(p.get("dense_flops") or 0),
                 _fmt_count(p.get("bitops") or 0)]
        if info.has_latency:
            lat = p.get("latency_ms")
            cells.append(f"{lat:.3f} ms" if lat is not None else "-")
        table.add_row(*cells, style=style)

    row("teacher", t, "1.0", "1.00", style="bold")
    for p in info.front:
        row(str(p.trial), p.to_dict(), f"{info.x_smaller(p):.1f}", f"{info.x_fewer(p):.2f}")
    Console(highlight=False, markup=False, width=max(100, Console().width)).print(table)
    err.print("size = bytes of the exported file (entropy-coded), bits/w = its bits per "
              "weight it stores; FLOPs = effective MACs at batch 1 (pruned weights skipped; "
              "the objective), dense = every weight multiplied, BOPs = MACs x weight bits x "
              "32 activation bits")
    names = {"size": "size", "flops": "FLOPs", "latency": "latency", "weights": "weights"}
    costs = [names.get(o, o) for o in info.objectives if o != "accuracy"]
    ref = ", ".join("1" for _ in info.objectives)
    click.echo(
        f"hypervolume {info.hypervolume:.4f} ({' and '.join(costs)} relative to the teacher, "
        f"1 - accuracy; reference point ({ref}); 1 would be a free, perfect model)")
    err.print(_write_report(run_dir, storage, study_name, html_path))
    pick = suggested_export(info)
    if pick is not None:
        err.print(f"export one with: slimtune export {_q(run_dir)} --trial {pick['trial']} "
                  f"--out student.slim{_storage_args(storage, study_name)}   ({pick['why']})")


@cli.command()
@_run_dir_arg
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML report [default: RUN_DIR/report.html, "
                   "skipped when the run directory is read-only].")
@_storage_opt
@_study_opt
def front(run_dir: Path | None, as_json: bool, html_path: Path | None, storage: str | None,
          study_name: str) -> None:
    """Print the Pareto front of a run and write its HTML report. The study is opened
    read-only; nothing in the run directory changes but the report."""
    from slimtune.api import front as front_doc
    from slimtune.api import front_info

    run_dir = _run_dir(run_dir, storage)
    if as_json:
        info = front_info(run_dir, storage=storage, study_name=study_name)
        err.print(_write_report(run_dir, storage, study_name, html_path))
        click.echo(json.dumps(front_doc(info), indent=2))
    else:
        _print_front(run_dir, storage, study_name, html_path)


@cli.command()
@_run_dir_arg
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write [default: RUN_DIR/report.html].")
@click.option("--card", "cards", type=click.Path(path_type=Path), multiple=True,
              help="An exported file (or its model card PATH.json) of this run: the table "
                   "shows its test accuracy. Repeatable.")
@_storage_opt
@_study_opt
def report(run_dir: Path | None, out: Path | None, cards: tuple[Path, ...],
           storage: str | None, study_name: str) -> None:
    """Write the run's report: one self-contained HTML file (works offline) with linked
    views of the front (accuracy against size, against MACs, all three in 3-D), the
    hypervolume after each trial, every front point's per-layer plan and, for any point
    you click, its export command. The study is opened read-only."""
    from slimtune.api import report as write

    run_dir = _run_dir(run_dir, storage)
    path = write(run_dir, out, storage=storage, study_name=study_name, cards=list(cards))
    err.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")


@cli.command()
@_run_dir_arg
@click.option("--trial", type=click.IntRange(min=0), required=True, help="Trial number.")
@_out_opt
@_onnx_opt
@_storage_opt
@_study_opt
@_store_opt
@_trust_opt
def export(run_dir: Path | None, trial: int, out: Path, onnx: str | None,
           onnx_opset: int | None, calibration: int | None, storage: str | None,
           study_name: str, artifact_store: str | None,
           trust_module: tuple[str, ...]) -> None:
    """Export one trial's compressed model and its model card."""
    from slimtune.api import export as run_export
    from slimtune.export.card import card_path

    card = run_export(_run_dir(run_dir, storage), trial, out, onnx=onnx,
                      onnx_opset=onnx_opset, calibration=calibration, storage=storage,
                      study_name=study_name, trust_module=list(trust_module) or None,
                      artifact_store=artifact_store)
    r = card["ratios"]
    err.print(
        f"wrote {out} ({card['size_bytes']:,} bytes, {r['size_x_smaller']:.1f}x smaller than "
        f"the teacher) and {card_path(out)}\n"
        f"test accuracy {card['test_accuracy']:.4f} "
        f"(teacher {card['teacher']['test_accuracy']:.4f}), "
        f"{_fmt_count(card['flops'])} MACs ({r['flops_x_fewer']:.2f}x fewer)"
    )
    _print_onnx(card)


def _print_onnx(card: dict[str, Any]) -> None:
    """One line per ONNX file the card records."""
    what = {"float": "float32 weights", "lowbit": "integer weights",
            "qdq": "int8 weights and activations"}
    for fmt, o in card.get("onnx", {}).items():
        acc = (f"test accuracy {o['test_accuracy']:.4f} in onnxruntime (PyTorch "
               f"{o['torch_test_accuracy']:.4f}, same argmax on {o['test_agreement']:.1%})"
               if "test_accuracy" in o else
               f"agrees with PyTorch on {o['argmax_agreement']:.1%} of a random batch")
        types = sorted(set(o.get("weights", {}).values()))
        kinds = f" {'/'.join(types)}" if types and fmt == "lowbit" else ""
        err.print(f"wrote {o['path']} ({o['bytes']:,} bytes, {what[fmt]}{kinds}): {acc}")


@cli.command()
@_run_dir_arg
@click.option("--trial", type=click.IntRange(min=0), required=True,
              help="Trial number of a front point (`slimtune front`).")
@click.option("--epochs", type=click.IntRange(min=1), required=True,
              help="Distillation epochs over the full training split.")
@_out_opt
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam's learning rate at the start of the cosine schedule "
                   "[default: the search's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="[default: the search's]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the shuffling and of dropout.")
@_onnx_opt
@_storage_opt
@_study_opt
@_store_opt
@_trust_opt
def finetune(run_dir: Path | None, trial: int, epochs: int, out: Path, lr: float | None,
             batch_size: int | None, seed: int, onnx: str | None, onnx_opset: int | None,
             calibration: int | None, storage: str | None, study_name: str,
             artifact_store: str | None, trust_module: tuple[str, ...]) -> None:
    """Fine-tune a front point to convergence on the full training split and export it.

    The plan's masks, bits and shapes are kept (the file is as large as the trial's); the
    epoch with the best validation accuracy is kept (epoch 0 is the search's weights)."""
    from slimtune.api import finetune as run_finetune
    from slimtune.export.card import card_path

    run_dir = _run_dir(run_dir, storage)
    with _progress() as bar:
        task = bar.add_task(f"fine-tuning trial {trial}", total=epochs, info="")

        def on_epoch(epoch: int, total: int, loss: float, acc: float) -> None:
            bar.update(task, completed=epoch, info=f"loss {loss:.4f}  val {acc:.4f}")

        card = run_finetune(run_dir, trial, out, epochs=epochs, lr=lr, batch_size=batch_size,
                            seed=seed, onnx=onnx, onnx_opset=onnx_opset,
                            calibration=calibration, storage=storage, study_name=study_name,
                            trust_module=list(trust_module) or None, on_epoch=on_epoch,
                            artifact_store=artifact_store)
    f, s = card["finetune"], card["finetune"]["search"]
    r = card["ratios"]
    err.print(
        f"wrote {out} ({card['size_bytes']:,} bytes, {r['size_x_smaller']:.1f}x smaller than "
        f"the teacher) and {card_path(out)}\n"
        f"best epoch {f['best_epoch']} of {f['epochs']} on {f['train_examples']:,} training "
        f"images: validation {card['val_accuracy']:.4f} (search's file "
        f"{s['val_accuracy_full']:.4f}), test {card['test_accuracy']:.4f} (search's file "
        f"{s['test_accuracy_full']:.4f}; teacher {card['teacher']['test_accuracy']:.4f})"
    )
    _print_onnx(card)
    err.print(_write_report(run_dir, storage, study_name))  # its table shows the new test
