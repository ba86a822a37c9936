"""What every command shares: the `slimtune` group, the stderr console, formatting of
sizes and counts, shell quoting, the progress bar and the common options."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slimtune.knobs import KNOBS
from slimtune.search.config import SearchConfig as _D
from slimtune.units import fmt_bytes as _fmt_bytes
from slimtune.units import fmt_count as _fmt_count

__all__ = ["cli", "err", "_q", "_storage_args", "_progress", "_fmt_bytes", "_fmt_count",
           "_fmt_seconds", "_D", "_OPT_IN", "_trust_opt", "_out_opt", "_onnx_opt",
           "_storage_opt", "_study_opt", "_store_opt", "_run_dir_arg", "_run_dir"]

_OPT_IN = [n for n, k in KNOBS.items() if k.opt_in]

# markup=False everywhere: messages carry file names, plans and trial errors, whose
# `[...]` rich would otherwise interpret (text vanishes, `[/]` raises MarkupError)
err = Console(stderr=True, highlight=False, log_path=False, markup=False)


def _q(path: object) -> str:
    """A path as it must be typed in a shell command."""
    return shlex.quote(str(path))


def _storage_args(storage: str | None, study_name: str | None) -> str:
    """The options a suggested command needs to reach the same study (never the URL
    itself: it may hold a password)."""
    out = " --storage URL" if storage else ""
    if study_name and study_name != _D.study_name:
        out += f" --study-name {_q(study_name)}"
    return out


def _progress(transient: bool = False) -> Progress:
    """A progress bar on stderr: description, bar, n/total, elapsed, a field `info`."""
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False), console=err,
        transient=transient,
    )


_trust_opt = click.option(
    "--trust-module", "trust_module", multiple=True, metavar="MODULE",
    help="Allow a model or data set that the file or study names as MODULE:function to be "
         "imported from MODULE and run (repeatable). Without it, only built-in and "
         "torchvision: names are used.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimtune")
def cli() -> None:
    """Compress a trained PyTorch model by multi-objective search."""




def _fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


_out_opt = click.option(
    "--out", type=click.Path(path_type=Path), required=True,
    help="File to write; the model card goes beside it with a .json suffix.")
_ONNX_HELP = ("Also write ONNX files, FORMATS comma-separated [--onnx alone: float]: float "
              "(PATH.onnx, float32 weights), lowbit (PATH.lowbit.onnx, quantized layers as "
              "INT2/INT4/INT8 + scales), qdq (PATH.qdq.onnx, int8 weights and activations "
              "calibrated on training images: ONNX Runtime's integer kernels). Each is checked "
              "in onnxruntime on the test split; the card records its accuracy.")


def _onnx_opt(f: Any) -> Any:
    f = click.option("--calibration", type=click.IntRange(min=16), default=None,
                     metavar="N", help="Training images a qdq file's activation ranges are "
                     "calibrated on [default: 256].")(f)
    f = click.option("--onnx-opset", type=click.IntRange(20, 25), default=None,
                     metavar="N", help="Highest opset a lowbit file may use [default: 25]: "
                     "below 25 2-bit layers are stored as INT4, at 20 every layer as "
                     "INT8 (for older runtimes).")(f)
    return click.option("--onnx", is_flag=False, flag_value="float", default=None,
                        metavar="FORMATS", help=_ONNX_HELP)(f)


_storage_opt = click.option("--storage", default=None, metavar="URL",
                            help="The --storage URL the search used, if any (then RUN_DIR "
                                 "may be left out).")
_store_opt = click.option("--artifact-store", default=None, metavar="URL",
                          help="Where the trial artifacts are, if not where the search "
                               "recorded: a directory or s3://BUCKET[/PREFIX] (endpoint and "
                               "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).")
_run_dir_arg = click.argument("run_dir", type=click.Path(path_type=Path), required=False)


def _run_dir(run_dir: Path | None, storage: str | None) -> Path:
    """RUN_DIR, which only a run in a --storage database may leave out (then ".")."""
    if run_dir is not None:
        return run_dir
    if storage is None:
        raise click.UsageError("give the RUN_DIR of a search, or the --storage URL (and "
                               "--study-name) of its study")
    return Path(".")
_study_opt = click.option("--study-name", default=_D.study_name, show_default=True,
                          help="The study name inside --storage.")
