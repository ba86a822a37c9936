"""Fully quantized ONNX: int8 weights and activations in QDQ form, so ONNX Runtime runs its
integer kernels (``QLinearConv``, ``QGemm``, ``MatMulInteger``...) in place of float ones.

The float32 graph goes through ``onnxruntime.quantization.quantize_static`` (static QDQ,
per-channel symmetric int8 weights, uint8 activations whose ranges are the min and max seen
on calibration images from the training split). A layer the plan quantized to at most 8
bits keeps its own codes and scales: its per-channel scales are passed as
``TensorQuantOverrides`` (a b-bit code is an int8 code at the same scale), so ONNX Runtime
quantizes that weight to exactly the values the student was trained with, and its biases
to int32 at those scales; the result is checked. Only the activations (and layers the plan
left at 32 bits) are quantized after training here, which is what the card's accuracy of
this file measures. The logits leave the graph in float32 (no Q/DQ on the output: 256
levels could tie two classes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.errors import SlimtuneError
from slimtune.export.onnx_options import MIN_CALIBRATION
from slimtune.export.onnx_weights import LayerCodes

__all__ = ["to_qdq", "MIN_CALIBRATION", "WEIGHT_OPS"]

#: ops whose weight input (index 1) ONNX Runtime quantizes: a compressed layer is one
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_CALIBRATION_BATCH = 32


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """quantize_static logs advice through the root logger and prints progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _reader(images: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(range(0, len(images), _CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.batches, None)
            if i is None:
                return None
            return {input_name: np.ascontiguousarray(images[i:i + _CALIBRATION_BATCH],
                                                     dtype=np.float32)}

    return Reader()


def _overrides(codes: dict[str, LayerCodes]) -> dict[str, list[dict[str, Any]]]:
    from onnxruntime.quantization import QuantType

    return {name: [{"axis": c.axis, "quant_type": QuantType.QInt8, "scale": float(s),
                    "zero_point": 0} for s in c.scale]
            for name, c in codes.items() if c.bits <= 8}


def _float_output(proto: Any, output: str) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of the graph's ``output``:
    the node before it writes the output in float32."""
    graph = proto.graph
    dq = next((n for n in graph.node if n.op_type == "DequantizeLinear"
               and list(n.output) == [output]), None)
    if dq is None:
        return
    q = next((n for n in graph.node if n.op_type == "QuantizeLinear"
              and n.output[0] == dq.input[0]), None)
    if q is None:
        return
    for n in graph.node:
        for i, name in enumerate(n.output):
            if name == q.input[0]:
                n.output[i] = output
    graph.node.remove(q)
    graph.node.remove(dq)


def _check(proto: Any, codes: dict[str, LayerCodes]) -> None:
    """Every weight op reads dequantized int8 inputs, and each kept layer's int8 codes are
    the student's."""
    from onnx import numpy_helper

    graph = proto.graph
    made_by = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        feeders = [made_by.get(i) for i in node.input[:2]]
        if any(f is None or f.op_type != "DequantizeLinear" for f in feeders):
            raise SlimtuneError(
                f"ONNX Runtime cannot run the {node.op_type} node `{node.name}` quantized "
                "(quantize_static left it in float32); export --onnx lowbit or --onnx float")
    for name, c in codes.items():
        if c.bits > 8:
            continue
        dq = next((n for n in graph.node if n.op_type == "DequantizeLinear"
                   and n.output[0] in (name, f"{name}_DequantizeLinear_Output")), None)
        q = inits.get(dq.input[0]) if dq is not None else None
        if q is None:
            raise SlimtuneError(f"layer `{c.layer}` was not quantized by ONNX Runtime; "
                                "export --onnx lowbit or --onnx float")
        got = numpy_helper.to_array(q)
        if got.shape != c.codes.shape or not np.array_equal(got.astype(np.int32),
                                                            c.codes.astype(np.int32)):
            raise SlimtuneError(f"ONNX Runtime quantized layer `{c.layer}` to other codes "
                                f"than its {c.bits}-bit ones; export --onnx lowbit")


def to_qdq(proto: Any, codes: dict[str, LayerCodes], calibration: np.ndarray | None, *,
           input_name: str, output_name: str) -> Any:
    """The static-QDQ graph of the float32 graph ``proto`` (``codes``: its quantized layers,
    :func:`~slimtune.export.onnx_weights.layer_codes`), activation ranges calibrated on
    ``calibration`` (N training inputs)."""
    if calibration is None or len(calibration) == 0:
        raise SlimtuneError(
            "`--onnx qdq` needs calibration images from the training split, and none were "
            "given; pass the data set (--data, --data-dir) or export --onnx lowbit")
    if len(calibration) < MIN_CALIBRATION:
        raise SlimtuneError(f"`calibration` must hold at least {MIN_CALIBRATION} images, but "
                            f"got {len(calibration)}")
    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise SlimtuneError("`--onnx qdq` needs the `onnxruntime` package; install it with "
                            "`pip install onnxruntime`") from None
    import onnx

    with tempfile.TemporaryDirectory(prefix="slimtune-qdq-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(proto, str(src))
        try:
            with _quiet():
                quantize_static(
                    str(src), str(dst), _reader(calibration, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"TensorQuantOverrides": _overrides(codes),
                                   "QDQDisableWeightAdjustForInt32Bias": True},
                )
        except SlimtuneError:
            raise
        except Exception as exc:
            msg = " ".join(str(exc).split())[:200]
            raise SlimtuneError(f"ONNX Runtime's static quantization failed "
                                f"({type(exc).__name__}: {msg}); export --onnx lowbit") from exc
        out = onnx.load(str(dst))
    _float_output(out, output_name)
    _check(out, codes)
    return out
