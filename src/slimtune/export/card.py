"""``export``: copy a trial's artifact out of a run, check it, and write its model card."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, RunDirError
from slimtune.export.artifact import load_with_header, open_artifact_bytes
from slimtune.export.onnx_options import OnnxOptions
from slimtune.export.storage import storage
from slimtune.files import atomic_path, write_into
from slimtune.models.train import accuracy  # the objective, beside the loop it reports
from slimtune.trust import Trust

__all__ = ["export", "card_path", "card_of", "evaluate", "read_card", "output_paths",
           "trial_artifact", "write_export", "onnx_writer"]

#: a model card is a few kB; a larger file is not one of ours
MAX_CARD_BYTES = 1 << 20


class StoredRun(Protocol):
    """What ``export`` reads of a run: ``slimtune.search.study.Run`` (opened by
    ``slimtune.api.export``; export/ does not import search/)."""

    @property
    def dir(self) -> Path: ...
    @property
    def study(self) -> Any: ...  # its optuna.Study
    @property
    def meta(self) -> dict[str, Any]: ...
    def artifact(self, t: Any) -> tuple[bytes, str]: ...  # (bytes, where they were read)


def card_path(path: str | Path) -> Path:
    """The model card beside an exported file: the same path with ``.json`` as suffix."""
    return Path(path).with_suffix(".json")


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card beside the exported file ``path`` ({} when there is none). Only its
    data-set fields are used, each checked for type; it is read with a size cap."""
    p = card_path(path)
    if not p.is_file() or p == Path(path):
        return {}
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise RunDirError(f"cannot read the model card {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CARD_BYTES:
        raise RunDirError(f"the model card {p} is larger than {MAX_CARD_BYTES} bytes: not a "
                          "slimtune model card")
    try:
        card = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise RunDirError(f"the model card {p} is not JSON; pass --data (and --data-dir) "
                          "or remove it") from None
    if not isinstance(card, dict):
        raise RunDirError(f"the model card {p} is not a JSON object")
    types = {"dataset": str, "data_dir": str, "subset": int, "val_subset": int}
    for key, kind in types.items():
        v = card.get(key)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise RunDirError(f"the model card {p} has a bad `{key}`: expected "
                              f"{kind.__name__}, got {v!r:.60}")
    return card


def evaluate(
    path: str | Path, data: str | None = None, split: str = "test",
    data_dir: str | Path | None = None, *, trust_module: str | list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of an exported file on a split (data set, its directory and subset from the
    model card beside the file unless given).

    A data set named by the card (not by ``data``) that is user code (``module:function``)
    runs only if ``trust_module`` trusts its module, as the model the artifact names does.
    """
    trust = Trust.of(trust_module)
    model, header = load_with_header(path, trust=trust)
    card = read_card(path)
    source = None  # the caller's --data is the caller's choice
    if data is None:
        data = card.get("dataset", "digits")
        source = f"the model card {card_path(path)}"
    same = data == card.get("dataset")
    if data_dir is None and same:
        data_dir = card.get("data_dir")
    ds = load_dataset(data, data_dir, card.get("subset") if same else None,
                      card.get("val_subset") if same else None, trust=trust, source=source)
    examples = ds.split(split)
    if examples.input_shape != header.input_shape:
        raise RunDirError(
            f"{path} takes inputs of shape {header.input_shape}, but `{data}` has "
            f"{examples.input_shape}; pass the dataset it was made for with --data"
        )
    return {"accuracy": accuracy(model, examples), "dataset": data, "split": split,
            "examples": len(examples)}


def output_paths(out: str | Path, onnx: Any = None) -> dict[str, Path]:
    """What ``export`` writes: the artifact, its card and the ONNX files ``onnx`` asks for
    (:meth:`OnnxOptions.of`); refused when two of them would be the same file."""
    out = Path(out)
    paths = {"artifact": out, "model card": card_path(out)}
    for fmt, p in OnnxOptions.of(onnx).paths(out).items():
        paths[f"ONNX {fmt} model"] = p
    onnx_note = " and the ONNX models to PATH[.FORMAT].onnx" if len(paths) > 2 else ""
    seen: dict[Path, str] = {}
    for what, p in paths.items():
        key = p.resolve() if p.parent.exists() else p.absolute()
        if key in seen:
            raise ConfigError(
                f"`--out {out}` would write the {what} over the {seen[key]} ({p}): the model "
                f"card goes to PATH.json{onnx_note}; "
                "choose an --out with another suffix, e.g. model.slim")
        seen[key] = what
    return paths


def _stored_numbers(attrs: dict[str, Any], raw: bytes, src: Path
                    ) -> tuple[float, int, int, int]:
    """(validation accuracy, effective MACs, dense MACs, bit operations) of the trial, as
    its search measured them on these very bytes (the artifact it saved)."""
    stored = attrs.get("size_bytes")
    if stored is not None and stored != len(raw):
        raise RunDirError(f"{src} is {len(raw):,} bytes, but its trial recorded "
                          f"{stored:,}: it is not that trial's artifact")
    keys = ("val_accuracy", "flops", "dense_flops", "bitops")
    missing = [k for k in keys if not isinstance(attrs.get(k), int | float)
               or isinstance(attrs.get(k), bool)]
    if missing:
        raise RunDirError(f"the trial of {src} recorded no {', '.join(missing)}: it is not a "
                          "trial slimtune completed")
    return (float(attrs["val_accuracy"]), int(attrs["flops"]), int(attrs["dense_flops"]),
            int(attrs["bitops"]))


def trial_artifact(run: StoredRun, trial: int, trust: Trust
                   ) -> tuple[Any, Any, Any, bytes, str]:
    """(the frozen trial, its model, header, bytes, where they were read) of a completed
    trial of ``run``, its artifact read from the run's store and checked; a
    :class:`RunDirError` naming what is wrong otherwise."""
    from slimtune.errors import ArtifactError

    frozen = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    if trial not in frozen:
        raise RunDirError(f"trial {trial} is not in {run.dir} (it has {len(frozen)} trials)")
    t = frozen[trial]
    if t.state.name != "COMPLETE" or t.user_attrs.get("status") == "over_budget":
        raise RunDirError(
            f"trial {trial} of {run.dir} did not complete; pick one from `slimtune front`"
        )
    raw, src = run.artifact(t)
    try:
        model, header = open_artifact_bytes(raw, f"of trial {trial}", trust=trust)
    except ArtifactError as exc:
        raise ArtifactError(f"trial {trial}'s artifact in {src} is damaged: {exc}") from None
    return t, model, header, raw, src


def export(
    run: StoredRun, trial: int, out: str | Path, *, onnx: Any = None,
    trust_module: str | list[str] | None = None,
) -> dict[str, Any]:
    """Write trial ``trial`` of the opened ``run`` to ``out`` and its model card beside it.

    ``onnx`` (:meth:`OnnxOptions.of`: True, "float,lowbit,qdq", ...) also writes those ONNX
    files beside it (``PATH.onnx``, ``PATH.lowbit.onnx``, ``PATH.qdq.onnx``), each checked
    against PyTorch with onnxruntime on the test split (the results are in the card's
    ``onnx``; a qdq file is calibrated on the training split).
    Returns the card. The test accuracy in the card is measured on the file's own bytes;
    the validation accuracy and FLOPs are those the search measured on the same bytes.
    The study and the artifact name the model and data set: user code among them runs
    only if ``trust_module`` trusts its module. Every file is written to a temporary file
    first and renamed once all of them are complete.
    """
    options = OnnxOptions.of(onnx)
    paths = output_paths(out, options)
    trust = Trust.of(trust_module)
    t, model, header, raw, src = trial_artifact(run, trial, trust)
    cfg = run.meta["config"]
    ds = load_dataset(cfg["data"], cfg.get("data_dir"), cfg.get("subset"), cfg.get("val_subset"),
                      trust=trust, source=f"the study of {run.dir}")
    val_acc, macs, dense, bitops = _stored_numbers(t.user_attrs, raw, src)
    card = card_of(run, trial, header, raw, model, val_accuracy=val_acc,
                   test_accuracy=accuracy(model, ds.test), flops=macs, dense_flops=dense,
                   bitops=bitops)
    write_export(paths, raw, card, onnx_writer(model, header, options, out, ds.train, ds.test))
    return card


def onnx_writer(model: Any, header: Any, options: OnnxOptions, out: str | Path,
                train: Any, test: Any) -> Callable[[], dict[str, Any]] | None:
    """What writes the ONNX files ``options`` asks for (None: none are asked for)."""
    if not options.formats:
        return None

    def write() -> dict[str, Any]:
        from slimtune.export.onnx import onnx_files

        return onnx_files(model, header.input_shape, header.plan, options, out,
                          train=train, test=test)

    return write


def card_of(run: StoredRun, trial: int, header: Any, raw: bytes, model: Any, *,
            val_accuracy: float,
            test_accuracy: float, flops: int, dense_flops: int, bitops: int,
            data: dict[str, Any] | None = None,
            teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of the artifact ``raw`` (its ``header``; ``model``, decoded from it)
    made from trial ``trial`` of ``run``: its numbers, the teacher's, the ratios between
    them, and what its bytes are spent on (``storage``). ``data``: the data set fields when
    they differ from the search's (a fine-tune on the full split), and ``teacher`` its
    numbers measured there."""
    meta = run.meta
    cfg = meta["config"]
    teacher = teacher or meta["teacher"]
    spent = storage(raw, model)
    data = data or {"dataset": cfg["data"], "data_dir": cfg.get("data_dir"),
                    "subset": cfg.get("subset"), "val_subset": cfg.get("val_subset")}
    return {
        "slimtune_version": meta.get("version"),
        **data,
        "model": header.model,
        "trial": trial,
        "run_dir": str(run.dir),
        "input_shape": list(header.input_shape),
        "num_classes": header.num_classes,
        "plan": header.plan.to_dict(),
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "size_bytes": len(raw),
        "fixed_size_bytes": spent["fixed_size_bytes"],
        "stored_weights": spent["stored_weights"],
        "bits_per_weight": spent["bits_per_weight"],
        "flops": flops,
        "dense_flops": dense_flops,
        "bitops": bitops,
        "teacher": teacher,
        "ratios": {
            "size_x_smaller": teacher["size_bytes"] / len(raw),
            "flops_x_fewer": teacher["flops"] / flops if flops else None,
            "val_accuracy_relative": (val_accuracy / teacher["accuracy"]
                                      if teacher["accuracy"] else None),
            "test_accuracy_relative": (
                test_accuracy / teacher["test_accuracy"] if teacher["test_accuracy"] else None
            ),
        },
        "storage": spent,
    }


def write_export(paths: dict[str, Path], raw: bytes, card: dict[str, Any],
                 onnx: Callable[[], dict[str, Any]] | None = None) -> None:
    """Write the artifact ``raw`` and its ``card`` to :func:`output_paths`' ``paths`` (with
    ``onnx``, :func:`onnx_writer`'s, also the ONNX files, their checks in the card's
    ``onnx``): each to a temporary file first, renamed once all of them are complete."""
    with atomic_path(paths["artifact"], "--out") as tmp_artifact, \
            atomic_path(paths["model card"], "model card") as tmp_card:
        write_into(tmp_artifact, raw, "--out", paths["artifact"])
        if onnx is not None:  # renamed into place as soon as all of them have been checked
            card["onnx"] = onnx()
        write_into(tmp_card, json.dumps(card, indent=2) + "\n", "model card",
                   paths["model card"])
