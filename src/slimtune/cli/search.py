"""`slimtune search`: the options, the live progress display and the summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from slimtune.cli.common import (
    _D,
    _OPT_IN,
    _fmt_bytes,
    _fmt_count,
    _fmt_seconds,
    _progress,
    _q,
    _storage_args,
    _trust_opt,
    cli,
    err,
)
from slimtune.cli.runs import _print_front
from slimtune.errors import SlimtuneError
from slimtune.export.onnx_options import FORMATS
from slimtune.objectives.latency import RUNTIMES
from slimtune.objectives.table import OBJECTIVES
from slimtune.search.config import PROMOTIONS, PRUNING_MODES, SAMPLERS


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
@click.option("--latency-runtime", type=click.Choice(RUNTIMES), default=_D.latency_runtime,
              show_default=True, help="Where the latency objective times a model: PyTorch, "
              "or the ONNX file of --latency-format in onnxruntime (CPU, the trial's threads).")
@click.option("--latency-batch", type=click.IntRange(min=1), default=_D.latency_batch,
              show_default=True, metavar="N", help="Inputs per timed forward pass.")
@click.option("--latency-format", type=click.Choice(list(FORMATS)),
              default=_D.latency_format, show_default=True,
              help="With --latency-runtime onnxruntime: the ONNX file timed (as `export "
              "--onnx FORMAT` writes it; qdq runs onnxruntime's int8 kernels).")
@click.option("--image-size", type=click.IntRange(4, 1024), default=None, metavar="PIXELS",
              help="With --data imagefolder:PATH: resize and centre-crop every image to "
                   "PIXELS x PIXELS [default: 32] (the same as --data imagefolderPIXELS:PATH).")
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
              help="Study name inside --storage (several searches can share one database; "
                   "searches started with the same --storage and --study-name share one "
                   "study and its trial budget).")
@click.option("--artifact-store", default=None, metavar="URL",
              help="Where trial artifacts go: a directory or s3://BUCKET[/PREFIX] (boto3; "
                   "endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                   "AWS_SECRET_ACCESS_KEY, never stored) [default: RUN_DIR/artifacts].")
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

    size = kwargs.pop("image_size")
    if size is not None:
        if not kwargs["data"].startswith("imagefolder:"):
            raise click.BadParameter(f"goes with --data imagefolder:PATH, but --data is "
                                     f"{kwargs['data']!r}", param_hint="--image-size")
        kwargs["data"] = f"imagefolder{size}:{kwargs['data'].partition(':')[2]}"
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
               "cache": "reused from the cache", "checkpoint": "from --checkpoint",
               "memory": "your model as given"}[source]
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

    def note(text: str) -> None:
        live()
        progress.console.log(text)

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
                 f"{counts['fully_trained']}, failed {counts['failed']}{_lost(counts)}; front "
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
                 f"{counts['failed']}{_lost(counts)}; front {counts['front']}, hypervolume "
                 f"{counts['hypervolume']:.4f}{left}",
        )
        if not err.is_terminal and finished % 10 == 0:
            err.print(f"{finished}/{counts['total']} trials: {progress.tasks[-1].fields['info']}")

    events = SearchEvents(teacher_epoch=teacher_epoch, teacher_step=teacher_step,
                          teacher_ready=teacher_ready, sensitivity=sensitivity, guided=guided,
                          started=started, trial_done=trial_done, warning=warning,
                          note=note, ladder_started=ladder_started)
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
                  f"{c['fully_trained']} fully fine-tuned, {c['failed']} jobs failed"
                  f"{_lost(c)}; "
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
              f"{c['failed']} failed{_lost(c)}{extra}; hypervolume {c['hypervolume']:.4f}")
    _print_front(run_dir, kwargs.get("storage"), kwargs.get("study_name") or _D.study_name,
                 html_path=None)


def _lost(counts: dict[str, Any]) -> str:
    """", lost 1 Ray node, 2 trials retried" once a node was lost, else ""."""
    nodes, retried = counts.get("nodes_lost", 0), counts.get("retried_lost", 0)
    if not nodes and not retried:
        return ""
    return (f", lost {nodes} Ray node{'s' if nodes != 1 else ''}, {retried} "
            f"{'trial' if retried == 1 else 'trials'} retried")
