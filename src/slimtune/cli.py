"""Command line: argument parsing and printing only; each command is one library call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slimtune.errors import SlimtuneError
from slimtune.search.config import PRUNING_MODES, SAMPLERS
from slimtune.search.config import SearchConfig as _D

err = Console(stderr=True, highlight=False, log_path=False)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimtune")
def cli() -> None:
    """Compress a trained PyTorch model by multi-objective search."""


@cli.command()
@click.option("--data", default=_D.data, show_default=True, help="Dataset name.")
@click.option("--model", default=_D.model, show_default=True, help="Model name.")
@click.option("--trials", type=click.IntRange(min=1), default=_D.trials, show_default=True,
              help="Trials to run (added to those already in --run-dir).")
@click.option("--epochs", type=click.IntRange(min=0), default=_D.epochs, show_default=True,
              help="Distillation fine-tune epochs per trial.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Where the study, teacher and trial artifacts go [default: runs/DATA-MODEL].")
@click.option("--seed", type=click.IntRange(min=0), default=_D.seed, show_default=True)
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True),
              default=_D.cpus_per_trial, show_default=True,
              help="CPUs Ray reserves for each trial.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=_D.gpus_per_trial,
              show_default=True,
              help="GPUs Ray reserves for each trial (fractions share a GPU).")
@click.option("--address", default=None,
              help="Join this Ray cluster (e.g. `auto`) instead of starting a local one.")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=_D.sampler,
              show_default=True)
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Begin with uniform plans (every layer alike) from light to heavy.")
@click.option("--pruning", type=click.Choice(list(PRUNING_MODES)), default=_D.pruning,
              show_default=True,
              help="Per-layer pruning knobs: weight sparsity, channel keep ratio, or both.")
@click.option("--objectives", default=",".join(_D.objectives), show_default=True,
              help="Comma-separated objectives from accuracy,size,flops,latency.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory of the data files (fashion-mnist: /usr/share/datasets/"
                   "fashion-mnist by default).")
@click.option("--subset", type=click.IntRange(min=1), default=None,
              help="Use at most N training examples (and N/4 validation and test ones).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Trained weights (a state dict) for --model: the teacher, not trained here.")
@click.option("--max-failures", type=click.IntRange(min=1), default=None,
              help="End the search once this many trials have failed [default: never].")
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=None,
              help="Teacher training epochs when it is trained [default: 40 on digits, else 10].")
def search(**kwargs: Any) -> None:
    """Search for the best accuracy / size / FLOPs trade-offs."""
    from slimtune.search import SearchConfig, SearchEvents
    from slimtune.search import search as run_search

    kwargs["objectives"] = tuple(o.strip() for o in kwargs["objectives"].split(",") if o.strip())
    config = SearchConfig(**kwargs)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err, transient=False,
    )
    state: dict[str, Any] = {}

    def live() -> Progress:  # started on the first event: errors before it stay one line
        if not state.get("live"):
            progress.start()
            state["live"] = True
        return progress

    def teacher_epoch(epoch: int, epochs: int, acc: float) -> None:
        live()
        if "teacher_task" not in state:
            state["teacher_task"] = progress.add_task("training teacher", total=epochs, info="")
        progress.update(state["teacher_task"], info=f"epoch {epoch}/{epochs}, val acc {acc:.4f}")
        if not err.is_terminal:  # no live bar in logs: one line per epoch instead
            err.print(f"teacher epoch {epoch}/{epochs}: val acc {acc:.4f}")

    def teacher_step(step: int, total: int) -> None:
        live()
        if "teacher_task" not in state:
            state["teacher_task"] = progress.add_task("training teacher", total=total, info="")
        progress.update(state["teacher_task"], completed=step, total=total)

    def teacher_ready(t: dict[str, Any], source: str) -> None:
        live()
        state["teacher"] = t
        how = {"trained": "trained", "run": "reused from the run directory",
               "cache": "reused from the cache", "checkpoint": "from --checkpoint"}[source]
        progress.console.log(
            f"teacher ({how}): val accuracy {t['accuracy']:.4f}, test {t['test_accuracy']:.4f}, "
            f"{_fmt_bytes(t['size_bytes'])}, {_fmt_count(t['flops'])} MACs"
        )

    def started(n: int, concurrency: int) -> None:
        state["task"] = progress.add_task("trials", total=n, info="")
        progress.console.log(
            f"running {n} trials, {concurrency} at a time, {config.epochs} fine-tune epochs "
            "each (x = smaller / fewer than the teacher)"
        )

    def trial_done(t: Any, counts: dict[str, int]) -> None:
        teacher = state["teacher"]
        if t.state.name == "COMPLETE":
            a = t.user_attrs
            acc, size, macs = a["val_accuracy"], a["size_bytes"], a["flops"]
            progress.console.print(
                f"trial {t.number:3d}  acc {acc:.4f}  {_fmt_bytes(size):>9} "
                f"({teacher['size_bytes'] / size:4.1f}x)  {_fmt_count(macs):>7} MACs "
                f"({teacher['flops'] / max(macs, 1):4.2f}x)  "
                f"{t.user_attrs.get('seconds', 0):4.1f} s"
            )
        else:
            progress.console.print(
                f"trial {t.number:3d}  FAILED: {t.user_attrs.get('error', '?')}")
        progress.update(
            state["task"], completed=counts["done"] + counts["failed"],
            info=f"running {counts['running']}, failed {counts['failed']}, "
                 f"hypervolume {counts['hypervolume']:.4f}",
        )

    events = SearchEvents(teacher_epoch=teacher_epoch, teacher_step=teacher_step,
                          teacher_ready=teacher_ready, started=started, trial_done=trial_done)
    run_dir = config.resolved_run_dir
    try:
        result = run_search(config, events)
    except KeyboardInterrupt:
        if state.get("live"):
            progress.stop()
        err.print(f"interrupted: finished trials are saved in {run_dir}; run the same command "
                  f"again to add trials, or `slimtune front {run_dir}` to see the front")
        sys.exit(130)
    finally:
        if state.get("live"):
            progress.stop()
    err.print(f"search finished in {result.seconds:.0f} s: {result.counts['done']} trials done, "
              f"{result.counts['failed']} failed; hypervolume {result.counts['hypervolume']:.4f}")
    _print_front(run_dir)


def _print_front(run_dir: Path) -> None:
    from slimtune.viz.report import front_info, write_html

    info = front_info(run_dir)
    t = info.teacher
    table = Table(title=f"Pareto front of {run_dir} ({info.model} on {info.dataset}; "
                        "accuracy on the validation split)")
    cols = ["trial", "accuracy", "size", "x smaller", "FLOPs", "x fewer", "dense", "BOPs"]
    if info.has_latency:
        cols.append("latency")
    for col in cols:
        table.add_column(col, justify="right")

    def row(name: str, p: Any, xs: str, xf: str, style: str | None = None) -> None:
        cells = [name, f"{p['accuracy']:.4f}", _fmt_bytes(p["size_bytes"]), xs,
                 _fmt_count(p["flops"]), xf, _fmt_count(p.get("dense_flops") or 0),
                 _fmt_count(p.get("bitops") or 0)]
        if info.has_latency:
            lat = p.get("latency_ms")
            cells.append(f"{lat:.3f} ms" if lat is not None else "-")
        table.add_row(*cells, style=style)

    row("teacher", t, "1.0", "1.00", style="bold")
    for p in info.front:
        row(str(p.trial), p.to_dict(), f"{info.x_smaller(p):.1f}", f"{info.x_fewer(p):.2f}")
    Console(highlight=False, width=max(100, Console().width)).print(table)
    err.print("FLOPs = effective MACs at batch 1 (pruned weights skipped; the objective), "
              "dense = every weight multiplied, BOPs = MACs x weight bits x 32 activation bits")
    Console(highlight=False).print(
        f"hypervolume {info.hypervolume:.4f} (size and FLOPs relative to the teacher, "
        "1 - accuracy; reference point (1, 1, 1); 1 would be a free, perfect model)")
    html = write_html(info)
    err.print(f"interactive plot: {html}")
    if info.front:
        err.print(f"export one with: slimtune export {run_dir} --trial {info.front[0].trial} "
                  f"--out student.slim")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON.")
def front(run_dir: Path, as_json: bool) -> None:
    """Print the Pareto front of a run and write RUN_DIR/pareto.html."""
    from slimtune.viz.report import front_info, write_html

    if as_json:
        info = front_info(run_dir)
        write_html(info)
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        _print_front(run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--trial", type=click.IntRange(min=0), required=True, help="Trial number.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File to write; the model card goes beside it with a .json suffix.")
@click.option("--onnx", is_flag=True,
              help="Also write PATH.onnx (dequantized float32 weights), checked with onnxruntime.")
def export(run_dir: Path, trial: int, out: Path, onnx: bool) -> None:
    """Export one trial's compressed model and its model card."""
    from slimtune.export.card import card_path
    from slimtune.export.card import export as run_export

    card = run_export(run_dir, trial, out, onnx=onnx)
    r = card["ratios"]
    err.print(
        f"wrote {out} ({card['size_bytes']:,} bytes, {r['size_x_smaller']:.1f}x smaller than "
        f"the teacher) and {card_path(out)}\n"
        f"test accuracy {card['test_accuracy']:.4f} "
        f"(teacher {card['teacher']['test_accuracy']:.4f}), "
        f"{_fmt_count(card['flops'])} MACs ({r['flops_x_fewer']:.2f}x fewer)"
    )
    if onnx:
        o = card["onnx"]
        err.print(f"wrote {o['path']} ({o['bytes']:,} bytes, float32 weights): onnxruntime "
                  f"agrees with PyTorch on {o['argmax_agreement']:.1%} of a test batch "
                  f"(max |diff| {o['max_abs_diff']:.1e})")


@cli.command("eval")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Dataset [default: the one in the model card].")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory of the data files [default: the one in the model card].")
@click.option("--json", "as_json", is_flag=True)
def eval_(path: Path, data: str | None, split: str, data_dir: Path | None,
          as_json: bool) -> None:
    """Load an exported file and print its accuracy."""
    from slimtune.export.card import evaluate

    res = evaluate(path, data, split, data_dir)
    if as_json:
        click.echo(json.dumps({"accuracy": res["accuracy"]}))
    else:
        click.echo(f"accuracy {res['accuracy']:.4f} on the {res['split']} split of "
                   f"{res['dataset']} ({res['examples']} examples)")


@cli.command()
@click.option("--model", default=_D.model, show_default=True, help="Model name.")
@click.option("--data", default=_D.data, show_default=True, help="Dataset name.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: 40 on digits, else 10].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--subset", type=click.IntRange(min=1), default=None,
              help="Use at most N training examples (and N/4 validation and test ones).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def train(model: str, data: str, epochs: int | None, data_dir: Path | None,
          subset: int | None, seed: int, as_json: bool) -> None:
    """Train the teacher with the standard recipe and cache it for `search`."""
    from slimtune.models.teacher import train_command

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err,
    )
    task: dict[str, Any] = {}

    def on_step(step: int, total: int) -> None:
        if "id" not in task:
            progress.start()
            task["id"] = progress.add_task(f"training {model} on {data}", total=total, info="")
        progress.update(task["id"], completed=step)

    def on_epoch(epoch: int, total: int, acc: float) -> None:
        progress.update(task["id"], info=f"epoch {epoch}/{total}, val acc {acc:.4f}")
        if not err.is_terminal:  # no live bar in logs: one line per epoch instead
            err.print(f"epoch {epoch}/{total}: val acc {acc:.4f} "
                      f"({progress.tasks[0].elapsed or 0:.0f} s)")

    try:
        res = train_command(model, data, epochs=epochs, data_dir=data_dir, subset=subset,
                            seed=seed, on_epoch=on_epoch, on_step=on_step)
    finally:
        if "id" in task:
            progress.stop()
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    how = "trained" if res["source"] == "trained" else "found in the cache"
    click.echo(f"{model} on {data}: {how} ({res['epochs']} epochs, {res['train_seconds']:.0f} s "
               f"on {res['device']}), val accuracy {res['val_accuracy']:.4f}, "
               f"test accuracy {res['test_accuracy']:.4f}\ncached at {res['path']}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        code = cli.main(args=argv, prog_name="slimtune", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see `slimtune {exc.ctx.info_name} --help`)" if exc.ctx and exc.ctx.parent else ""
        print(f"slimtune: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("slimtune: aborted", file=sys.stderr)
        sys.exit(130)
    except SlimtuneError as exc:
        print(f"slimtune: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
