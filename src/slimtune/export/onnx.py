"""ONNX export of a loaded slimtune model in one of three formats, checked with onnxruntime.

The model is what :func:`slimtune.load` returns: a plain ``torch.nn.Module`` (Conv2d, Linear,
BatchNorm2d, ReLU, pooling, Flatten, Sequential) whose weights are already dequantized
float32. It is exported with the ``torch.export``-based exporter (``dynamo=True``, the
maintained path since PyTorch 2.9; it needs ``onnxscript``) with a dynamic batch dimension,
input ``input`` and output ``logits``, every weight embedded in the one ``.onnx`` file.
That float32 graph is the ``float`` format; the others rewrite it (:data:`FORMATS`):

- ``lowbit``: each layer the plan quantized stored as INT2/INT4/INT8 codes with
  per-channel scales feeding ``DequantizeLinear`` (``export/onnx_weights.py``), float32
  activations: small on disk, the same numbers as the student;
- ``qdq``: int8 weights *and* activations, static QDQ calibrated on training images
  (``export/onnx_qdq.py``): ONNX Runtime runs integer kernels.

The file is then checked with ``onnx.checker`` and run with onnxruntime on the CPU, on the
test split when one is given (its accuracy, and how often its argmax agrees with
PyTorch's) and on a seeded random batch; the returned dict says how close it is to PyTorch
and which kernels ONNX Runtime runs. The file is written under a temporary name and moved
into place only once every check passed, so a failed export leaves no file behind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.errors import SlimtuneError
from slimtune.export.onnx_options import FORMATS, MAX_OPSET, OnnxOptions, onnx_path

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "FORMATS", "export_onnx", "onnx_files", "onnx_path",
           "session", "quantized_layers", "calibration_images", "MAX_OPSET"]



INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_BATCH_DIM = "batch"
_EXAMPLE_BATCH = 2  # batch 1 would let torch.export specialize the batch dimension
# loggers that report progress at INFO (or dump graphs on failure) during an export
_QUIET_LOGGERS = (
    "onnxscript",
    "onnx_ir",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch.fx.experimental.symbolic_shapes",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 300


def _require(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SlimtuneError(
            f"ONNX export needs the `{package}` package; install it with `pip install {package}`"
        ) from None


def _reason(exc: BaseException) -> str:
    """One line naming the innermost cause of ``exc`` (exporter errors nest several)."""
    root, seen = exc, {id(exc)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    text = _ANSI.sub("", str(root))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    msg = f"{type(root).__name__}: {line}" if line else type(root).__name__
    return msg if len(msg) <= _MAX_REASON else msg[: _MAX_REASON - 3] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress output, warnings and log records; errors still raise."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, _QUIET_LOGGERS)]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _check_file(onnx: ModuleType, path: Path) -> int:
    """Validate the saved model; return its default-domain opset."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    from onnx.external_data_helper import uses_external_data

    if any(uses_external_data(t) for t in proto.graph.initializer):
        raise SlimtuneError("the exported ONNX model stores weights outside its file")
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise SlimtuneError(
            f"the exported ONNX model has inputs {[i.name for i in inputs]}, expected ['input']"
        )
    if [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise SlimtuneError(
            f"the exported ONNX model has outputs {[o.name for o in proto.graph.output]}, "
            "expected ['logits']"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        raise SlimtuneError("the exported ONNX model's batch dimension is not dynamic")
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets:
        raise SlimtuneError("the exported ONNX model declares no ai.onnx opset")
    return int(opsets[0])


def quantized_layers(model: nn.Module, plan: Any) -> dict[str, int]:
    """Module name -> bits of every layer ``plan`` quantizes (below 32 bits) in ``model``,
    the model decoded from an artifact made with ``plan``."""
    from slimtune.export.artifact import stored_weights

    return {name: bits for name, (_, bits) in stored_weights(model, plan).items() if bits < 32}


def calibration_images(split: Any, n: int) -> np.ndarray:
    """The first ``n`` inputs of a training split (:class:`~slimtune.data.split.Split`), as
    float32 numpy: the activation ranges of a ``qdq`` file are calibrated on them."""
    xs = [batch.x.detach().float().cpu().numpy()
          for batch in split.head(int(n)).batches(256)]
    if not xs:
        raise SlimtuneError("`--onnx qdq` needs calibration images, but the training split "
                            "is empty")
    return np.concatenate(xs)[: int(n)]


def session(path: str | Path, threads: int = 0, optimized: str | Path | None = None) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` of ``path``, quiet (``threads`` intra-op
    threads, 0: onnxruntime's choice; ``optimized``: where to save the graph it runs)."""
    ort = _require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _kernels(onnx: ModuleType, optimized: Path) -> dict[str, int]:
    """Op type -> count in the graph ONNX Runtime runs after its optimizations (saved at
    ``optimized`` by :func:`session`; fused QLinearConv / QGemm are the integer kernels)."""
    graph = onnx.load(str(optimized), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _compare(model: nn.Module, run: Any, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(onnxruntime's logits, PyTorch's) on the batch ``x``."""
    device = _device_of(model)
    with torch.no_grad():
        expected = model(x.to(device)).detach().float().cpu().numpy()
    got = np.asarray(run.run([OUTPUT_NAME], {INPUT_NAME: x.float().cpu().numpy()})[0])
    if got.shape != expected.shape:
        raise SlimtuneError(
            f"onnxruntime gives outputs of shape {got.shape}, PyTorch {expected.shape}")
    return got, expected


def _on_split(model: nn.Module, run: Any, split: Any) -> dict[str, Any]:
    """The file's accuracy on ``split``, the PyTorch model's, and their argmax agreement."""
    n = right = right_torch = agree = 0
    for batch in split.batches(256):
        got, expected = _compare(model, run, batch.x)
        y = batch.y.cpu().numpy()
        mine, theirs = got.argmax(axis=1), expected.argmax(axis=1)
        n += len(y)
        right += int((mine == y).sum())
        right_torch += int((theirs == y).sum())
        agree += int((mine == theirs).sum())
    if n == 0:
        return {}
    return {"test_accuracy": right / n, "torch_test_accuracy": right_torch / n,
            "test_agreement": agree / n, "test_examples": n}


def _to_onnx(model: nn.Module, example: torch.Tensor) -> Any:
    """The float32 ``onnx.ModelProto`` of ``model`` (the torch.export-based exporter)."""
    try:
        with _quiet():
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim(_BATCH_DIM)},),
            )
            proto = program.model_proto
    except Exception as exc:
        raise SlimtuneError(f"ONNX export failed: {_reason(exc)}") from exc
    return _strip(proto)


def _float_graph(model: nn.Module, example: torch.Tensor, exported: dict[str, Any] | None
                 ) -> Any:
    """The float32 graph of ``model``: exported now, or a copy of the one ``exported``
    keeps (which it keeps from now on)."""
    import onnx

    if exported is None or "graph" not in exported:
        graph = _to_onnx(model, example)
        if exported is None:
            return graph
        exported["graph"] = graph
    proto = onnx.ModelProto()
    proto.CopyFrom(exported["graph"])  # the rewrites change their graph in place
    return proto


def _need_quantized(layer_bits: dict[str, int]) -> None:
    if not layer_bits:
        raise SlimtuneError(
            "`--onnx lowbit` stores quantized layers as integers, but the plan quantizes no "
            "layer (every weight is float32); export --onnx float, or --onnx qdq to "
            "quantize it to int8 at export")


def _strip(proto: Any) -> Any:
    """``proto`` without the exporter's per-node provenance (PyTorch stack traces and node
    names in ``metadata_props`` and ``doc_string``) and the shapes it inferred for
    intermediate values: in a small model they outweigh the weights, and no runtime needs
    them."""
    graph = proto.graph
    del graph.value_info[:]  # inferred shapes of intermediate values: runtimes infer them
    for item in (*graph.node, *graph.input, *graph.output, *graph.initializer):
        del item.metadata_props[:]
        item.doc_string = ""
    return proto


def export_onnx(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    *,
    fmt: str = "float",
    layer_bits: dict[str, int] | None = None,
    calibration: np.ndarray | None = None,
    test: Any | None = None,
    max_opset: int = MAX_OPSET,
    check_batch: int = 64,
    seed: int = 0,
    exported: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` in format ``fmt`` (:data:`FORMATS`) and check
    the file with onnxruntime.

    ``input_shape`` is one sample's shape, without the batch dimension (e.g. ``(1, 8, 8)``).
    ``layer_bits`` (module name -> bits, :func:`quantized_layers`) names the quantized
    layers; ``lowbit`` needs at least one. ``calibration`` (N training inputs,
    :func:`calibration_images`) is what ``qdq`` calibrates activation ranges on. ``test``
    (a :class:`~slimtune.data.split.Split`) adds the file's accuracy on it, the PyTorch
    model's, and how often their argmax agree. ``max_opset`` caps the opset a lowbit file
    may need (below 25 a 2-bit layer is stored as INT4, at 20 every layer as INT8).
    The check also runs ``check_batch`` inputs through both PyTorch and onnxruntime (CPU):
    the first of ``test``, else standard-normal ones drawn from a ``torch.Generator``
    seeded with ``seed`` (``max_abs_diff``, ``argmax_agreement``). ``exported``: a dict
    shared by the calls that write one model in several formats: the model is exported to
    a float32 graph once, kept there, and each format rewrites a copy.

    Returns ``{"path", "format", "bytes", "opset", "max_abs_diff", "argmax_agreement",
    "kernels"}`` (``kernels``: op type -> count in the graph onnxruntime runs), with
    ``"weights"`` (layer -> its ONNX type) for lowbit and qdq and the ``test`` fields
    (``test_accuracy``, ``torch_test_accuracy``, ``test_agreement``, ``test_examples``).

    Raises :class:`SlimtuneError` (one line) when the export or a check fails.
    """
    onnx = _require("onnx", "onnx")
    _require("onnxruntime", "onnxruntime")
    _require("onnxscript", "onnxscript")  # the torch.export-based exporter imports it
    if fmt not in FORMATS:
        raise SlimtuneError(f"`--onnx` must be one of {', '.join(FORMATS)}, but got {fmt!r}")
    layer_bits = dict(layer_bits or {})
    if fmt == "lowbit":
        _need_quantized(layer_bits)
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise SlimtuneError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise SlimtuneError(f"input_shape must be positive sizes without the batch, got {shape}")
    if int(check_batch) < 1:
        raise SlimtuneError(f"check_batch must be at least 1, got {check_batch}")

    path = Path(path)
    if path.is_dir():
        raise SlimtuneError(f"cannot write the ONNX model to {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimtuneError(f"cannot create the directory for {path}: {_reason(exc)}") from exc
    tmp = path.with_name(path.name + ".tmp")
    ort_graph = path.with_name(path.name + ".ort.tmp")  # the graph onnxruntime runs

    modes = {m: m.training for m in model.modules()}
    model.eval()
    report: dict[str, Any] = {}
    try:
        device = _device_of(model)
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.randn((int(check_batch), *shape), generator=gen, dtype=torch.float32)
        example = torch.randn((_EXAMPLE_BATCH, *shape), generator=gen, dtype=torch.float32)
        if test is not None:  # real inputs: a qdq file is calibrated for them, not noise
            x = next(iter(test.head(int(check_batch)).batches(int(check_batch)))).x.float().cpu()
        try:
            with torch.no_grad():
                out = model(x.to(device))
        except Exception as exc:
            raise SlimtuneError(
                f"the model fails on inputs of shape {tuple(x.shape)}: {_reason(exc)}"
            ) from exc
        if not isinstance(out, torch.Tensor):
            raise SlimtuneError(
                f"the model must return one tensor of logits, got {type(out).__name__}"
            )

        proto = _float_graph(model, example.to(device), exported)
        if fmt != "float":
            from slimtune.export.onnx_weights import layer_codes

            codes = layer_codes(proto, layer_bits)
            if fmt == "lowbit":
                from slimtune.export.onnx_weights import to_lowbit

                proto, report["weights"] = to_lowbit(proto, codes, int(max_opset))
            else:
                from slimtune.export.onnx_qdq import to_qdq

                proto = to_qdq(proto, codes, calibration, input_name=INPUT_NAME,
                               output_name=OUTPUT_NAME)
                report["weights"] = {c.layer: "int8" for c in codes.values()}
        try:
            onnx.save(proto, str(tmp))
        except Exception as exc:
            raise SlimtuneError(f"cannot write the ONNX model to {tmp}: {_reason(exc)}") from exc

        try:
            opset = _check_file(onnx, tmp)
        except SlimtuneError:
            raise
        except Exception as exc:
            raise SlimtuneError(f"the exported ONNX model is invalid: {_reason(exc)}") from exc
        try:
            run = session(tmp, optimized=ort_graph)
            report["kernels"] = _kernels(onnx, ort_graph)
        except Exception as exc:
            raise SlimtuneError(
                f"onnxruntime cannot run the exported ONNX model: {_reason(exc)}"
            ) from exc
        got, expected = _compare(model, run, x)
        if test is not None:
            report.update(_on_split(model, run, test))

        try:
            tmp.replace(path)
        except OSError as exc:
            raise SlimtuneError(f"cannot write the ONNX model to {path}: {_reason(exc)}") from exc
    finally:
        for m, training in modes.items():
            m.training = training
        tmp.unlink(missing_ok=True)
        ort_graph.unlink(missing_ok=True)

    n = expected.shape[0]
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    agree = got.reshape(n, -1).argmax(axis=1) == expected.reshape(n, -1).argmax(axis=1)
    return {
        "path": str(path),
        "format": fmt,
        "bytes": path.stat().st_size,
        "opset": opset,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "argmax_agreement": float(agree.mean()),
        **report,
    }


def onnx_files(model: nn.Module, input_shape: tuple[int, ...], plan: Any,
               options: OnnxOptions, out: str | Path, *, train: Any | None = None,
               test: Any | None = None) -> dict[str, dict[str, Any]]:
    """Write every ONNX file ``options`` asks for beside the artifact ``out`` (the model
    decoded from it, made with ``plan``); returns format -> :func:`export_onnx`'s report.

    ``train`` (the training split) gives a qdq file its calibration images, ``test`` the
    accuracy of every file. The files are written under temporary names and renamed only
    once all of them passed their checks: a failure leaves none of them behind."""
    layer_bits = quantized_layers(model, plan)
    if "lowbit" in options.formats:
        _need_quantized(layer_bits)  # before any file is written
    calibration = None
    if "qdq" in options.formats:
        if train is None:
            raise SlimtuneError("`--onnx qdq` needs calibration images from the training "
                                "split, and none were given; export --onnx lowbit")
        calibration = calibration_images(train, options.calibration)
    reports: dict[str, dict[str, Any]] = {}
    parts: dict[Path, Path] = {}
    exported: dict[str, Any] = {}  # the float32 graph, exported once for every format
    try:
        for fmt, final in options.paths(out).items():
            part = final.with_name(final.name + ".part")
            parts[part] = final
            reports[fmt] = export_onnx(model, input_shape, part, fmt=fmt,
                                       layer_bits=layer_bits, calibration=calibration,
                                       test=test, max_opset=options.max_opset,
                                       exported=exported)
        for part, final in parts.items():
            part.replace(final)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    for fmt, report in reports.items():
        report["path"] = str(onnx_path(out, fmt))
    return reports
