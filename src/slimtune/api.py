"""The public verbs: one plain function for each CLI command, and for notebooks and tests.

``slimtune.search``, ``slimtune.front``, ``slimtune.export``, ``slimtune.evaluate``,
``slimtune.load`` and ``slimtune.train`` are these functions (``slimtune.search`` and
``slimtune.export`` through their subpackages, which can be called: see
``slimtune/__init__.py``). Each imports what it needs when called, so ``import slimtune``
stays cheap; this is the one module that reaches into every subpackage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from slimtune.search.config import SearchConfig
    from slimtune.search.events import SearchEvents, SearchResult
    from slimtune.viz.front import FrontInfo

__all__ = ["search", "resume", "front", "front_info", "suggested_export", "report", "space",
           "export",
           "finetune", "evaluate", "load", "train"]

def search(
    config: SearchConfig | None = None, events: SearchEvents | None = None, *,
    trust_module: str | list[str] | None = None, model: Any = None,
    train: Any = None, val: Any = None, test: Any = None,
    input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
    **options: Any,
) -> SearchResult:
    """Run a search: of ``config``, or of ``SearchConfig(**options)`` (``search(trials=10,
    model="small_cnn")``), not both. ``events`` receive the progress; user code
    (``module:function``) the config names is the caller's and runs; ``trust_module``
    trusts more modules (see :func:`slimtune.search.engine.search`).

    From a notebook, ``model`` may be a trained ``torch.nn.Module`` (the teacher as it
    is) and ``train``, ``val``, ``test`` the data: each a pair ``(x, y)`` of tensors or
    arrays, a torch Dataset of ``(x, y)`` items or a DataLoader of ``(x, y)`` batches (read
    once into tensors; input shape and classes come from them, and ``input_shape`` /
    ``num_classes``, when given, must agree). They travel to the Ray
    workers as objects; the artifacts name no code, so load one with
    ``slimtune.load(path, model=MyNet())`` (:mod:`slimtune.inmemory`)."""
    from slimtune import inmemory
    from slimtune.search.config import SearchConfig
    from slimtune.search.engine import search as run_search

    given = [s is not None for s in (train, val, test)]
    if any(given) and not all(given):
        raise TypeError("pass all three of train, val and test, or none")
    if model is not None:
        options["model"] = model if isinstance(model, str) else inmemory.register_model(model)
    if all(given):
        options["data"] = inmemory.register_data(train, val, test)
    if input_shape is not None or num_classes is not None:  # what the caller expects
        _check_data_shape(options.get("data") or (config.data if config else "digits"),
                          input_shape, num_classes)
    if config is None:
        config = SearchConfig(**options)
    elif options:
        raise TypeError("pass either a SearchConfig or keyword options, not both")
    return run_search(config, events, trust_module=trust_module)


def _check_data_shape(data: str, input_shape: tuple[int, ...] | None,
                      num_classes: int | None) -> None:
    """ConfigError unless the data set ``data`` has the ``input_shape`` and
    ``num_classes`` the caller gave."""
    from slimtune.data.datasets import load_dataset
    from slimtune.errors import ConfigError

    ds = load_dataset(data)
    if input_shape is not None and tuple(input_shape) != tuple(ds.input_shape):
        raise ConfigError(f"`input_shape` must match the data, {tuple(ds.input_shape)}, but "
                          f"got {tuple(input_shape)}")
    if num_classes is not None and num_classes != ds.num_classes:
        raise ConfigError(f"`num_classes` must match the data's {ds.num_classes} classes, "
                          f"but got {num_classes}")


def resume(
    run_dir: str | Path, events: SearchEvents | None = None, *,
    trust_module: str | list[str] | None = None, **overrides: Any,
) -> SearchResult:
    """Continue the search in ``run_dir`` with its stored settings; ``overrides`` change
    only how it runs (``trials``, ``address``, ...: see
    :func:`slimtune.search.engine.resume`)."""
    from slimtune.search.engine import resume as run_resume

    return run_resume(run_dir, events, trust_module=trust_module, **overrides)


def front_info(run_dir: str | Path, *, storage: str | None = None,
               study_name: str = "slimtune") -> FrontInfo:
    """The front of a run as :class:`slimtune.viz.front.FrontInfo` (what tables and plots
    draw). The study is opened read-only."""
    from slimtune.search.study import open_run
    from slimtune.viz.front import front_info as info_of

    return info_of(open_run(run_dir, storage=storage, study_name=study_name))


def suggested_export(info: FrontInfo) -> dict[str, Any] | None:
    """The front point to export when you have no rule of your own: the smallest keeping
    95 % of the teacher's validation accuracy, else the most accurate. ``{"trial": n,
    "why": "..."}``, or None for an empty front (:func:`slimtune.viz.front.suggested`)."""
    from slimtune.viz.front import suggested

    return suggested(info)


def front(run: str | Path | FrontInfo, *, storage: str | None = None,
          study_name: str = "slimtune") -> dict[str, Any]:
    """The Pareto front of a run as plain data: ``{"teacher": {...}, "front": [...],
    "hypervolume": h, "suggested": {"trial": n, "why": "..."} | None}`` (see
    :func:`suggested_export`). ``run``: a run directory (``storage`` and ``study_name``
    as the search had them), or its :func:`front_info` already read."""
    from slimtune.viz.front import FrontInfo

    info = run if isinstance(run, FrontInfo) else front_info(run, storage=storage,
                                                            study_name=study_name)
    return {**info.to_dict(), "suggested": suggested_export(info)}


def report(run_dir: str | Path, out: str | Path | None = None, *,
           storage: str | None = None, study_name: str = "slimtune",
           cards: list[str | Path] = ()) -> Path:  # type: ignore[assignment]
    """Write the run's HTML report (default ``RUN_DIR/report.html``): one self-contained
    file with linked views of the front, the search's history, every front point's
    per-layer plan and its export command. ``cards``: model cards of files exported from
    the run, whose test accuracy the table shows. The study is opened read-only. Returns
    the file's path."""
    from slimtune.search.study import open_run
    from slimtune.viz.report import read_cards, report_info, write_report

    run = open_run(run_dir, storage=storage, study_name=study_name)
    return write_report(report_info(run, read_cards(list(cards), run.dir)), out)


def space(model: str, data: str, *, pruning: str = "both", knobs: tuple[str, ...] = (),
          data_dir: str | Path | None = None,
          trust_module: str | list[str] | None = None) -> str:
    """The default search space of ``model`` on ``data`` as an editable space file (YAML
    text for ``search --space``): a rule per layer with its shape, weights and MACs."""
    from slimtune.data.datasets import load_dataset
    from slimtune.models.zoo import build_model
    from slimtune.objectives.flops import count_flops
    from slimtune.spaces.space import SearchSpace
    from slimtune.spaces.template import space_template
    from slimtune.trust import Trust

    SearchSpace(layers=(), pruning=pruning, knobs=tuple(knobs))  # the options, checked
    trust = Trust.of(trust_module).with_names(model, data)  # names the caller gives
    ds = load_dataset(data, data_dir, trust=trust)
    net = build_model(model, ds.num_classes, ds.input_shape, trust=trust)
    macs = {n: dense for n, (dense, _) in count_flops(net, ds.input_shape).layers.items()}
    return space_template(net, ds.input_shape, pruning, tuple(knobs),
                          title=f"{model} on {data}", macs=macs)


def _onnx_options(onnx: Any, opset: int | None, calibration: int | None) -> Any:
    from slimtune.export.onnx_options import OnnxOptions

    given = {k: v for k, v in (("max_opset", opset), ("calibration", calibration))
             if v is not None}
    if isinstance(onnx, OnnxOptions):
        from dataclasses import replace

        return replace(onnx, **given)
    return OnnxOptions.of(onnx, **given)


def export(
    run_dir: str | Path, trial: int, out: str | Path, *, onnx: Any = None,
    onnx_opset: int | None = None, calibration: int | None = None,
    storage: str | None = None, study_name: str = "slimtune",
    trust_module: str | list[str] | None = None, artifact_store: str | None = None,
) -> dict[str, Any]:
    """Write trial ``trial`` of ``run_dir`` to ``out`` and its model card beside it; returns
    the card. ``onnx``: ONNX files to write beside it too (True: ``PATH.onnx`` with float32
    weights; or formats from ``float``, ``lowbit``, ``qdq`` as a list or a comma-separated
    string: ``PATH.FORMAT.onnx``); ``onnx_opset`` caps the opset of a lowbit file,
    ``calibration`` is how many training images a qdq file is calibrated on. User code the
    study names runs only if ``trust_module`` trusts its module (see
    :func:`slimtune.export.card.export`). The artifact is read from the store the search
    recorded, or from ``artifact_store`` (a directory or ``s3://BUCKET/PREFIX``); with
    ``storage``, ``run_dir`` need not exist."""
    from slimtune.export.card import export as export_run
    from slimtune.export.card import output_paths
    from slimtune.search.study import open_run

    onnx = _onnx_options(onnx, onnx_opset, calibration)
    output_paths(out, onnx)  # outputs that clash are refused before the study is opened
    run = open_run(run_dir, storage=storage, study_name=study_name,
                   artifact_store=artifact_store)
    return export_run(run, trial, out, onnx=onnx, trust_module=trust_module)


def finetune(
    run_dir: str | Path, trial: int, out: str | Path, *, epochs: int,
    lr: float | None = None, batch_size: int | None = None, seed: int = 0,
    onnx: Any = None, onnx_opset: int | None = None, calibration: int | None = None,
    storage: str | None = None, study_name: str = "slimtune",
    trust_module: str | list[str] | None = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
    artifact_store: str | None = None,
) -> dict[str, Any]:
    """Fine-tune front point ``trial`` of ``run_dir`` for ``epochs`` on the full training
    split, keep its best epoch by validation accuracy and write it to ``out`` with its
    model card (numbers measured on the new file; the search's beside them); returns the
    card. ``on_epoch(epoch, epochs, loss, val_accuracy)`` after each epoch; ``onnx``,
    ``onnx_opset``, ``calibration`` and ``artifact_store`` as for :func:`export`. See
    :mod:`slimtune.search.finetune`."""
    from slimtune.export.card import output_paths
    from slimtune.search.finetune import FinetuneConfig
    from slimtune.search.finetune import finetune as run_finetune
    from slimtune.search.study import open_run

    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    onnx = _onnx_options(onnx, onnx_opset, calibration)
    output_paths(out, onnx)  # outputs that clash are refused before the study is opened
    run = open_run(run_dir, storage=storage, study_name=study_name, read_only=False,
                   artifact_store=artifact_store)
    return run_finetune(run, trial, out, config, onnx=onnx, on_epoch=on_epoch,
                        trust_module=trust_module)


def evaluate(
    path: str | Path, data: str | None = None, split: str = "test",
    data_dir: str | Path | None = None, *, trust_module: str | list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of an exported file on a data set split (by default the data set of the
    model card beside it): ``{"accuracy", "dataset", "split", "examples"}``."""
    from slimtune.export.card import evaluate as evaluate_file

    return evaluate_file(path, data, split, data_dir, trust_module=trust_module)


def load(path: str | Path, *, trust_module: str | list[str] | None = None,
         model: nn.Module | None = None) -> nn.Module:
    """The ``torch.nn.Module`` in an exported slimtune file (never unpickles anything).

    Safe on a file from anyone: it runs no code the file chooses. A file naming your own
    model (``mymodule:factory``) loads only with ``trust_module="mymodule"``, or pass the
    uncompressed architecture yourself: ``load(path, model=MyNet())``."""
    from slimtune.export.artifact import load as load_file

    return load_file(path, trust_module=trust_module, model=model)


def train(model: str, data: str, **options: Any) -> dict[str, Any]:
    """Train (or fetch from the cache) the teacher for ``model`` on ``data``; ``options``:
    ``epochs``, ``data_dir``, ``subset``, ``seed``, ``on_epoch``, ``on_step`` (see
    :func:`slimtune.models.teacher.train_command`)."""
    from slimtune.models.teacher import train_command

    return train_command(model, data, **options)
