"""ONNX export of a loaded slimtune model, checked with onnxruntime.

The model is what :func:`slimtune.load` returns: a plain ``torch.nn.Module`` (Conv2d, Linear,
BatchNorm2d, ReLU, pooling, Flatten, Sequential) whose weights are already dequantized
float32. It is exported with the ``torch.export``-based exporter (``dynamo=True``, the
maintained path since PyTorch 2.9; it needs ``onnxscript``) with a dynamic batch dimension,
input ``input`` and output ``logits``, every weight embedded in the one ``.onnx`` file.

The file is then checked with ``onnx.checker`` and run with onnxruntime on the CPU over a
seeded random batch; the returned dict says how close its outputs are to PyTorch's. The
file is written under a temporary name and moved into place only once every check passed,
so a failed export leaves no file behind.
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

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx"]

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


def _run_ort(ort: ModuleType, path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def export_onnx(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    *,
    check_batch: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` and check the file with onnxruntime.

    ``input_shape`` is one sample's shape, without the batch dimension (e.g. ``(1, 8, 8)``).
    The check runs ``check_batch`` standard-normal inputs drawn from a ``torch.Generator``
    seeded with ``seed`` through both PyTorch and onnxruntime (CPU) and returns
    ``{"path", "bytes", "max_abs_diff", "argmax_agreement", "opset"}``.

    Raises :class:`SlimtuneError` (one line) when the export or a check fails.
    """
    onnx = _require("onnx", "onnx")
    ort = _require("onnxruntime", "onnxruntime")
    _require("onnxscript", "onnxscript")  # the torch.export-based exporter imports it
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

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        device = _device_of(model)
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.randn((int(check_batch), *shape), generator=gen, dtype=torch.float32)
        example = torch.randn((_EXAMPLE_BATCH, *shape), generator=gen, dtype=torch.float32)

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
        expected = out.detach().float().cpu().numpy()

        try:
            with _quiet():
                program = torch.onnx.export(
                    model,
                    (example.to(device),),
                    None,
                    dynamo=True,
                    verbose=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim(_BATCH_DIM)},),
                )
        except Exception as exc:
            raise SlimtuneError(f"ONNX export failed: {_reason(exc)}") from exc
        try:
            program.save(str(tmp), external_data=False)
        except Exception as exc:
            raise SlimtuneError(f"cannot write the ONNX model to {tmp}: {_reason(exc)}") from exc

        try:
            opset = _check_file(onnx, tmp)
        except SlimtuneError:
            raise
        except Exception as exc:
            raise SlimtuneError(f"the exported ONNX model is invalid: {_reason(exc)}") from exc
        try:
            got = _run_ort(ort, tmp, x.numpy())
        except Exception as exc:
            raise SlimtuneError(
                f"onnxruntime cannot run the exported ONNX model: {_reason(exc)}"
            ) from exc
        if got.shape != expected.shape:
            raise SlimtuneError(
                f"onnxruntime gives outputs of shape {got.shape}, PyTorch {expected.shape}"
            )

        try:
            tmp.replace(path)
        except OSError as exc:
            raise SlimtuneError(f"cannot write the ONNX model to {path}: {_reason(exc)}") from exc
    finally:
        for m, training in modes.items():
            m.training = training
        tmp.unlink(missing_ok=True)

    n = expected.shape[0]
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    agree = got.reshape(n, -1).argmax(axis=1) == expected.reshape(n, -1).argmax(axis=1)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "argmax_agreement": float(agree.mean()),
        "opset": opset,
    }
