"""The commands about models and data rather than runs: `space`, `eval`, `train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from slimtune.cli.common import (
    _D,
    _OPT_IN,
    _progress,
    _q,
    _trust_opt,
    cli,
    err,
)
from slimtune.search.config import PRUNING_MODES


@cli.command()
@click.option("--model", default=_D.model, show_default=True, help="Model name.")
@click.option("--data", default=_D.data, show_default=True, help="Dataset name.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--pruning", type=click.Choice(list(PRUNING_MODES)), default=_D.pruning,
              show_default=True)
@click.option("--knob", "knobs", multiple=True, metavar="NAME",
              help=f"Also list the opt-in knob NAME (repeatable): {', '.join(_OPT_IN)}.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the file here instead of printing it.")
def space(model: str, data: str, data_dir: Path | None, pruning: str,
          knobs: tuple[str, ...], out: Path | None) -> None:
    """Print the default search space of a model as an editable space file for
    `search --space`: a rule per layer (shape, weights and MACs in a comment) with every
    knob at its default range."""
    from slimtune.api import space as template

    text = template(model, data, pruning=pruning, knobs=knobs, data_dir=data_dir)
    if out is None:
        click.echo(text, nl=False)
        return
    from slimtune.files import write_atomic

    write_atomic(out, text.encode("utf-8"), "--out")
    err.print(f"wrote {out}: edit it, then `slimtune search --model {_q(model)} --data "
              f"{_q(data)} --space {_q(out)}`")


@cli.command("eval")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Dataset [default: the one in the model card].")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory of the data files [default: the one in the model card].")
@click.option("--json", "as_json", is_flag=True)
@_trust_opt
def eval_(path: Path, data: str | None, split: str, data_dir: Path | None,
          as_json: bool, trust_module: tuple[str, ...]) -> None:
    """Load an exported file and print its accuracy. The file and its model card run no
    code of their own choosing (see --trust-module)."""
    from slimtune.api import evaluate

    res = evaluate(path, data, split, data_dir, trust_module=list(trust_module) or None)
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
    from slimtune.api import train as train_teacher

    progress = _progress()
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
        res = train_teacher(model, data, epochs=epochs, data_dir=data_dir, subset=subset,
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
