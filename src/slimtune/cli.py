"""Command line: argument parsing and printing only; each command is one library call."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slimtune.errors import SlimtuneError
from slimtune.knobs import KNOBS
from slimtune.objectives.table import OBJECTIVES
from slimtune.search.config import PROMOTIONS, PRUNING_MODES, SAMPLERS
from slimtune.search.config import SearchConfig as _D

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
@click.option("--guided/--no-guided", default=True, show_default=True,
              help="After the uniform warm start, plans that compress each layer by its "
                   "measured one-shot sensitivity and its share of size and FLOPs.")
@click.option("--pruning", type=click.Choice(list(PRUNING_MODES)), default=_D.pruning,
              show_default=True,
              help="Per-layer pruning knobs: weight sparsity, channel keep ratio, or both.")
@click.option("--knob", "knobs", multiple=True, metavar="NAME",
              help=f"Also search the opt-in per-layer knob NAME (repeatable): "
                   f"{', '.join(_OPT_IN)}.")
@click.option("--space", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="A search-space file (YAML or JSON): per-layer rules by name or `re:` "
                   "regex, each knob's range, choices or value, or `skip: true`; "
                   "`slimtune space` prints a template.")
@click.option("--objectives", default=",".join(_D.objectives), show_default=True,
              help=f"Comma-separated objectives from {','.join(OBJECTIVES)}.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory of the data files (fashion-mnist: /usr/share/datasets/"
                   "fashion-mnist by default).")
@click.option("--subset", type=click.IntRange(min=1), default=None,
              help="Use at most N training examples (and N/4 validation and test ones).")
@click.option("--val-subset", type=click.IntRange(min=1), default=None,
              help="Use at most N validation examples [default: a quarter of --subset, or "
                   "all]: the search chooses on them, so more makes its choices less noisy.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Trained weights (a state dict) for --model: the teacher, not trained here.")
@click.option("--max-failures", type=click.IntRange(min=1), default=None,
              help="End the search once this many trials have failed [default: never].")
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=None,
              help="Teacher training epochs when it is trained [default: 40 on digits, else 10].")
@click.option("--max-size", default=None, metavar="BYTES",
              help="Size budget of the exported file, e.g. 50kB, 1.5MB, 20KiB: larger plans "
                   "are recorded as infeasible and never trained.")
@click.option("--max-flops", default=None, metavar="N",
              help="Budget of effective MACs, e.g. 2M, 1.2G: larger plans are recorded as "
                   "infeasible and never trained.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Validation accuracy a trial must reach to count (a constraint).")
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="Stop a trial once a finished one, no larger and with no more FLOPs, beats "
                   "its accuracy by more than a margin that shrinks as epochs pass.")
@click.option("--budget-epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="N",
              help="The search's budget in fine-tune epochs over all trials; turns on the "
                   "multi-fidelity search (many plans screened, the best fine-tuned) unless "
                   "--no-fidelity.")
@click.option("--fidelity/--no-fidelity", default=None,
              help="Multi-fidelity search: screen plans at rung 0 (BatchNorm re-estimated, "
                   "no training), promote the non-dominated up the --rungs [default: on "
                   "with --budget-epochs].")
@click.option("--rungs", default=None, metavar="E0,E1,...",
              help="Fine-tune epochs reached at each rung, the last = --epochs "
                   "[default: 0,EPOCHS/9,EPOCHS].")
@click.option("--eta", type=click.IntRange(min=2), default=_D.eta, show_default=True,
              help="Of the plans at a rung, the top 1/ETA move up.")
@click.option("--promotion", type=click.Choice(PROMOTIONS), default=_D.promotion,
              show_default=True,
              help="hypervolume: a rung's non-dominated plans adding the most hypervolume "
                   "move up first, at most 1/ETA of the rung in all; moasha: MO-ASHA as "
                   "published (the most isolated first, every plan ever in the top 1/ETA).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              metavar="DIR",
              help="Continue the search in DIR with its settings up to its trial budget "
                   "(--trials sets a new one); trials a dead search left running are retried.")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of a shared study (postgresql+psycopg://..., "
                   "mysql+pymysql://...) [default: SQLite in the run directory].")
@click.option("--study-name", default=_D.study_name, show_default=True,
              help="Study name inside --storage (several searches can share one database).")
@_trust_opt
@click.pass_context
def search(ctx: click.Context, resume_dir: Path | None, trust_module: tuple[str, ...],
           **kwargs: Any) -> None:
    """Search for the best accuracy / size / FLOPs trade-offs."""
    from click.core import ParameterSource

    from slimtune.api import resume
    from slimtune.api import search as run_search
    from slimtune.search import SearchConfig, SearchEvents
    from slimtune.search.config import parse_quantity

    kwargs["objectives"] = tuple(o.strip() for o in kwargs["objectives"].split(",") if o.strip())
    if kwargs["max_size"] is not None:
        kwargs["max_size"] = parse_quantity(kwargs["max_size"], "--max-size", "B")
    if kwargs["max_flops"] is not None:
        kwargs["max_flops"] = parse_quantity(kwargs["max_flops"], "--max-flops")
    if kwargs["rungs"] is not None:
        try:
            kwargs["rungs"] = tuple(float(r) for r in kwargs["rungs"].split(","))
        except ValueError:
            raise click.BadParameter(f"must be comma-separated fine-tune epochs like 0,1,3, "
                                     f"but got {kwargs['rungs']!r}",
                                     param_hint="--rungs") from None
    if resume_dir is not None:
        given = {k: v for k, v in kwargs.items()
                 if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        run_dir = resume_dir
        config = None
    else:
        config = SearchConfig(**kwargs)
        run_dir = config.resolved_run_dir
    progress = _progress(transient=not err.is_terminal)  # in a log, no last frame
    state: dict[str, Any] = {}
    again = (f"slimtune search --resume {_q(run_dir)}"
             + _storage_args(kwargs.get("storage"), kwargs.get("study_name")))

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

    def sensitivity(layers: int, tasks: int) -> None:
        live()
        progress.console.log(f"measuring the one-shot sensitivity of {layers} layers "
                             f"({tasks} task{'s' if tasks > 1 else ''}) ...")

    def warning(text: str) -> None:
        live()
        progress.console.log(f"warning: {text}")

    def guided(seconds: float, plans: int) -> None:
        progress.console.log(f"sensitivity measured in {seconds:.0f} s: {plans} guided plans "
                             "queued after the uniform ones")

    def started(n: int, concurrency: int) -> None:
        import time

        state["t0"] = time.monotonic()
        state["task"] = progress.add_task("trials", total=n, info="")
        epochs = (config.epochs if config else None)
        progress.console.log(
            f"running {n} trials, {concurrency} at a time"
            + (f", {epochs} fine-tune epoch{'s' if epochs != 1 else ''} each"
               if epochs is not None else "")
            + " (x = smaller / fewer than the teacher)"
        )

    def ladder_started(budget: float, rungs: tuple[float, ...], concurrency: int) -> None:
        state["task"] = progress.add_task("fine-tune epochs", total=budget, info="")
        progress.console.log(
            f"multi-fidelity search: {budget:g} fine-tune epochs, {concurrency} jobs at a "
            f"time, rungs at {', '.join(f'{r:g}' for r in rungs)} epochs (rung 0: "
            f"BatchNorm re-estimated, no training); x = smaller / fewer than the teacher")

    def job_done(t: Any, counts: dict[str, Any]) -> None:
        teacher = state["teacher"]
        a = t.user_attrs
        if t.state.name == "FAIL":
            progress.console.print(f"plan {a.get('plan_id', '?'):>4} rung {a.get('rung', '?')}"
                                   f"  FAILED: {a.get('error', '?')}")
        elif a.get("rung", 0) > 0:  # rung 0 is many and quick: the bar counts it
            line = (f"plan {a['plan_id']:4d}  rung {a['rung']} ({a['epochs']:.3g} ep)  acc "
                    f"{a['val_accuracy']:.4f}  {_fmt_bytes(a['size_bytes']):>9} "
                    f"({t.x_smaller(teacher):4.1f}x)  {_fmt_count(a['flops']):>7} MACs "
                    f"({t.x_fewer(teacher):4.2f}x)  {a.get('seconds', 0):4.1f} s")
            if t.state.name == "COMPLETE":
                line += f"  -> trial {t.number}"
            progress.console.print(line)
        promoted = ", ".join(str(p) for p in counts["promoted"][:-1])
        progress.update(
            state["task"], completed=counts["epochs_spent"],
            info=f"screened {counts['screened']}, promoted {promoted}, fully trained "
                 f"{counts['fully_trained']}, failed {counts['failed']}; front "
                 f"{counts['front']}, hypervolume {counts['hypervolume']:.4f}")

    def trial_done(t: Any, counts: dict[str, Any]) -> None:
        import time

        if "budget_epochs" in counts:
            return job_done(t, counts)
        teacher = state["teacher"]
        a = t.user_attrs
        name = t.state.name
        if name in ("COMPLETE", "PRUNED"):
            acc, size, macs = a["val_accuracy"], a["size_bytes"], a["flops"]
            line = (f"trial {t.number:3d}  acc {acc:.4f}  {_fmt_bytes(size):>9} "
                    f"({t.x_smaller(teacher):4.1f}x)  {_fmt_count(macs):>7} MACs "
                    f"({t.x_fewer(teacher):4.2f}x)  {a.get('seconds', 0):4.1f} s")
            if name == "PRUNED":
                line += (f"  stopped after epoch {a['epochs_trained']}: trial "
                         f"{a['dominated_by']} is no larger and reached "
                         f"{a['dominator_accuracy']:.4f}")
            elif a.get("status") == "over_budget":
                line += "  over budget: not trained (accuracy before fine-tuning)"
            elif t.infeasible:
                line += "  infeasible (below --min-accuracy)"
            progress.console.print(line)
        else:
            progress.console.print(f"trial {t.number:3d}  FAILED: {a.get('error', '?')}")
        finished = counts["done"] + counts["failed"] + counts["pruned"]
        left = ""
        if finished:
            per = (time.monotonic() - state["t0"]) / finished
            left = f", about {_fmt_seconds(per * (counts['total'] - finished))} left"
        progress.update(
            state["task"], completed=finished,
            info=f"running {counts['running']}, pruned {counts['pruned']}, failed "
                 f"{counts['failed']}; front {counts['front']}, hypervolume "
                 f"{counts['hypervolume']:.4f}{left}",
        )
        if not err.is_terminal and finished % 10 == 0:
            err.print(f"{finished}/{counts['total']} trials: {progress.tasks[-1].fields['info']}")

    events = SearchEvents(teacher_epoch=teacher_epoch, teacher_step=teacher_step,
                          teacher_ready=teacher_ready, sensitivity=sensitivity, guided=guided,
                          started=started, trial_done=trial_done, warning=warning,
                          ladder_started=ladder_started)
    trust = list(trust_module) or None
    try:
        if resume_dir is not None:
            result = resume(resume_dir, events, trust_module=trust, **given)
        else:
            result = run_search(config, events, trust_module=trust)
    except KeyboardInterrupt as exc:
        from slimtune.search.signals import Terminated

        if state.get("live"):
            progress.stop()
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        err.print(f"{how}: finished trials are saved in {run_dir}; the running ones were "
                  f"marked failed and will be retried: continue with `{again}`, or see the "
                  f"front with `slimtune front {_q(run_dir)}"
                  f"{_storage_args(kwargs.get('storage'), kwargs.get('study_name'))}`")
        import signal

        signum = Terminated.signum if isinstance(exc, Terminated) else signal.SIGINT
        sys.exit(128 + signum)  # 143 for SIGTERM, 130 for SIGINT, as a shell reports them
    except SlimtuneError as exc:
        if "t0" in state:  # the trials had begun: say how to go on
            raise type(exc)(f"{exc}; finished trials are saved: continue with `{again}`"
                            ) from None
        raise
    finally:
        if state.get("live"):
            progress.stop()
    c = result.counts
    if "budget_epochs" in c:
        steps = ", ".join(f"{i}->{i + 1}: {p}" for i, p in enumerate(c["promoted"][:-1]))
        err.print(f"search finished in {result.seconds:.0f} s: {c['reached'][0]} plans "
                  f"screened, promoted {steps}; "
                  f"{c['fully_trained']} fully fine-tuned, {c['failed']} jobs failed; "
                  f"{c['epochs_spent']:.1f} of {c['budget_epochs']:g} fine-tune epochs spent; "
                  f"hypervolume {c['hypervolume']:.4f}")
        _print_front(run_dir, kwargs.get("storage"),
                     kwargs.get("study_name") or _D.study_name, html_path=None)
        return
    extra = ""
    if c["pruned"] or c["over_budget"]:
        extra = (f"; {c['pruned']} stopped early, {c['over_budget']} over budget (not "
                 f"trained): {c['epochs_saved']} of "
                 f"{c['epochs_saved'] + c['epochs_trained']} trial epochs saved")
    err.print(f"search finished in {result.seconds:.0f} s: {c['done']} trials done, "
              f"{c['failed']} failed{extra}; hypervolume {c['hypervolume']:.4f}")
    _print_front(run_dir, kwargs.get("storage"), kwargs.get("study_name") or _D.study_name,
                 html_path=None)


def _fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


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

    info = front_info(run_dir, storage=storage, study_name=study_name)
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
    Console(highlight=False, markup=False, width=max(100, Console().width)).print(table)
    err.print("FLOPs = effective MACs at batch 1 (pruned weights skipped; the objective), "
              "dense = every weight multiplied, BOPs = MACs x weight bits x 32 activation bits")
    click.echo(
        f"hypervolume {info.hypervolume:.4f} (size and FLOPs relative to the teacher, "
        "1 - accuracy; reference point (1, 1, 1); 1 would be a free, perfect model)")
    err.print(_write_report(run_dir, storage, study_name, html_path))
    pick = suggested_export(info)
    if pick is not None:
        err.print(f"export one with: slimtune export {_q(run_dir)} --trial {pick['trial']} "
                  f"--out student.slim{_storage_args(storage, study_name)}   ({pick['why']})")


_out_opt = click.option(
    "--out", type=click.Path(path_type=Path), required=True,
    help="File to write; the model card goes beside it with a .json suffix.")
_onnx_opt = click.option(
    "--onnx", is_flag=True,
    help="Also write PATH.onnx (dequantized float32 weights), checked with onnxruntime.")
_storage_opt = click.option("--storage", default=None, metavar="URL",
                            help="The --storage URL the search used, if any.")
_study_opt = click.option("--study-name", default=_D.study_name, show_default=True,
                          help="The study name inside --storage.")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML report [default: RUN_DIR/report.html, "
                   "skipped when the run directory is read-only].")
@_storage_opt
@_study_opt
def front(run_dir: Path, as_json: bool, html_path: Path | None, storage: str | None,
          study_name: str) -> None:
    """Print the Pareto front of a run and write its HTML report. The study is opened
    read-only; nothing in the run directory changes but the report."""
    from slimtune.api import front as front_doc
    from slimtune.api import front_info

    if as_json:
        info = front_info(run_dir, storage=storage, study_name=study_name)
        err.print(_write_report(run_dir, storage, study_name, html_path))
        click.echo(json.dumps(front_doc(info), indent=2))
    else:
        _print_front(run_dir, storage, study_name, html_path)


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


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write [default: RUN_DIR/report.html].")
@click.option("--card", "cards", type=click.Path(path_type=Path), multiple=True,
              help="An exported file (or its model card PATH.json) of this run: the table "
                   "shows its test accuracy. Repeatable.")
@_storage_opt
@_study_opt
def report(run_dir: Path, out: Path | None, cards: tuple[Path, ...], storage: str | None,
           study_name: str) -> None:
    """Write the run's report: one self-contained HTML file (works offline) with linked
    views of the front (accuracy against size, against MACs, all three in 3-D), the
    hypervolume after each trial, every front point's per-layer plan and, for any point
    you click, its export command. The study is opened read-only."""
    from slimtune.api import report as write

    path = write(run_dir, out, storage=storage, study_name=study_name, cards=list(cards))
    err.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--trial", type=click.IntRange(min=0), required=True, help="Trial number.")
@_out_opt
@_onnx_opt
@_storage_opt
@_study_opt
@_trust_opt
def export(run_dir: Path, trial: int, out: Path, onnx: bool, storage: str | None,
           study_name: str, trust_module: tuple[str, ...]) -> None:
    """Export one trial's compressed model and its model card."""
    from slimtune.api import export as run_export
    from slimtune.export.card import card_path

    card = run_export(run_dir, trial, out, onnx=onnx, storage=storage, study_name=study_name,
                      trust_module=list(trust_module) or None)
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


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
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
@_trust_opt
def finetune(run_dir: Path, trial: int, epochs: int, out: Path, lr: float | None,
             batch_size: int | None, seed: int, onnx: bool, storage: str | None,
             study_name: str, trust_module: tuple[str, ...]) -> None:
    """Fine-tune a front point to convergence on the full training split and export it.

    The plan's masks, bits and shapes are kept (the file is as large as the trial's); the
    epoch with the best validation accuracy is kept (epoch 0 is the search's weights)."""
    from slimtune.api import finetune as run_finetune
    from slimtune.export.card import card_path

    with _progress() as bar:
        task = bar.add_task(f"fine-tuning trial {trial}", total=epochs, info="")

        def on_epoch(epoch: int, total: int, loss: float, acc: float) -> None:
            bar.update(task, completed=epoch, info=f"loss {loss:.4f}  val {acc:.4f}")

        card = run_finetune(run_dir, trial, out, epochs=epochs, lr=lr, batch_size=batch_size,
                            seed=seed, onnx=onnx, storage=storage, study_name=study_name,
                            trust_module=list(trust_module) or None, on_epoch=on_epoch)
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
    err.print(_write_report(run_dir, storage, study_name))  # its table shows the new test


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
    except OSError as exc:  # a full disk, a file in the way, no permission
        where = f" {exc.filename}" if exc.filename else ""
        print(f"slimtune: error: cannot read or write{where}: {exc.strerror or exc}",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
