"""Integer weights in an ONNX graph: each quantized layer's codes and scales, read back from
the float32 graph the exporter wrote, and the low-bit (weight-only) rewrite of that graph.

A slimtune layer quantized to ``b`` bits holds ``codes * scale`` with integer codes in
``[-(2^(b-1) - 1), 2^(b-1) - 1]`` and one scale per output channel (``ops/quantize.py``:
max-abs scaling, so every channel's largest weight meets the top code). The exporter may
fold a following BatchNorm into the weight, which multiplies each output channel by one
number: the channel stays on a grid of the same codes with another scale. So the codes are
recovered exactly by max-abs scaling of the weight *as it is in the graph*, along the
axis that is the layer's output channels there (:func:`grid_codes`); a weight that is not
on such a grid (the exporter changed it some other way) is an error, never rounded.

:func:`to_lowbit` stores each quantized layer's codes as the narrowest ONNX integer type
that holds them (INT2 for 2 bits, INT4 for 3-4, INT8 for 5-8) with its per-channel scales
feeding a ``DequantizeLinear``; activations stay float32. INT4 needs opset 21, INT2 opset
25 (ONNX Runtime 1.31 runs both on its CPU provider); ``max_opset`` caps the types used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slimtune.errors import SlimtuneError

__all__ = ["LayerCodes", "grid_codes", "layer_codes", "to_lowbit", "ONNX_TYPES", "type_for"]

#: an ONNX integer type: (name, TensorProto enum name, bits it holds, opset DequantizeLinear
#: takes it from, IR version that has it)
ONNX_TYPES: tuple[tuple[str, str, int, int, int], ...] = (
    ("int2", "INT2", 2, 25, 11),
    ("int4", "INT4", 4, 21, 10),
    ("int8", "INT8", 8, 13, 7),
)
#: how far a weight may be off its grid, in units of its channel's step (float32 rounding
#: of a folded BatchNorm is ~1e-5 steps)
_GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LayerCodes:
    """One quantized layer's weight as it is in the ONNX graph."""

    layer: str  # the module name (``features.3``)
    initializer: str  # the graph's initializer holding its float32 weight
    bits: int  # the plan's bit-width
    axis: int  # the initializer's axis of output channels (one scale each)
    codes: np.ndarray  # int8, the initializer's shape
    scale: np.ndarray  # float32, one per channel along ``axis``


def type_for(bits: int, max_opset: int) -> tuple[str, str, int, int, int]:
    """The narrowest ONNX integer type holding ``bits``-bit codes at opset <= ``max_opset``."""
    for t in ONNX_TYPES:
        if bits <= t[2] and t[3] <= max_opset:
            return t
    raise SlimtuneError(f"`max_opset` must be at least 13 for integer weights, but got "
                        f"{max_opset}")


def grid_codes(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Max-abs codes and scales of ``w`` per slice along ``axis``, and how far ``w`` is off
    that grid (the largest error in units of its slice's step)."""
    qmax = 2 ** (bits - 1) - 1
    moved = np.moveaxis(w.astype(np.float32), axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    amax = np.abs(flat).max(axis=1) if flat.size else np.zeros(moved.shape[0], np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.rint(flat / scale[:, None]), -qmax, qmax)
    off = float(np.max(np.abs(codes * scale[:, None] - flat) / scale[:, None])) \
        if flat.size else 0.0
    codes = np.moveaxis(codes.reshape(moved.shape), 0, axis).astype(np.int8)
    return codes, scale, off


def _output_axis(graph: Any, name: str, ndim: int) -> int:
    """The axis of ``name``'s output channels as its consumer uses it (the grid's axis)."""
    from onnx import helper

    for node in graph.node:
        if name not in node.input:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and node.input[1] == name:
            return 0 if attrs.get("transB", 0) else 1
        if node.op_type == "MatMul" and node.input[1] == name:
            return ndim - 1
        return 0  # Conv, ConvTranspose: torch's dim 0 is ONNX's too
    return 0


def layer_codes(proto: Any, layer_bits: dict[str, int]) -> dict[str, LayerCodes]:
    """Initializer name -> :class:`LayerCodes` for every layer of ``layer_bits`` (module
    name -> bits, below 32) in the float32 graph ``proto``.

    Raises :class:`SlimtuneError` naming the layer when its weight is not an initializer of
    the graph or not on its grid."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out: dict[str, LayerCodes] = {}
    for layer, bits in layer_bits.items():
        name = f"{layer}.weight"
        if name not in inits:
            raise SlimtuneError(
                f"layer `{layer}` is quantized to {bits} bits but the ONNX graph has no "
                f"initializer `{name}` (the exporter merged or renamed it); export "
                "--onnx float")
        w = numpy_helper.to_array(inits[name])
        first = _output_axis(proto.graph, name, w.ndim)
        best = None
        for axis in (first, *(a for a in range(w.ndim) if a != first)):
            codes, scale, off = grid_codes(w, bits, axis)
            if off <= _GRID_TOLERANCE:
                best = LayerCodes(layer, name, bits, axis, codes, scale)
                break
        if best is None:
            raise SlimtuneError(
                f"layer `{layer}`'s weight in the ONNX graph is not on its {bits}-bit grid "
                "(the exporter changed it); export --onnx float")
        out[name] = best
    return out


def _set_opset(proto: Any, opset: int, ir_version: int) -> Any:
    """``proto`` at default-domain opset ``opset`` (converted when it is lower)."""
    from onnx import version_converter

    current = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if current < opset:
        try:
            proto = version_converter.convert_version(proto, opset)
        except Exception as exc:  # the converter has no adapter for an op of the graph
            raise SlimtuneError(
                f"cannot convert the ONNX graph from opset {current} to {opset} for its "
                f"integer weights ({type(exc).__name__}: {str(exc)[:120]}); pass a lower "
                "--onnx-opset") from None
    proto.ir_version = max(proto.ir_version, ir_version)
    return proto


def to_lowbit(proto: Any, codes: dict[str, LayerCodes], max_opset: int = 25
              ) -> tuple[Any, dict[str, str]]:
    """``proto`` with each weight of ``codes`` stored as integers + per-channel scales
    feeding a ``DequantizeLinear`` whose output keeps the weight's name; returns the new
    graph and layer -> the ONNX type its weight is stored as."""
    import ml_dtypes  # onnx's own dependency: numpy dtypes of INT4 and INT2
    from onnx import helper, numpy_helper

    types = {c.initializer: type_for(c.bits, max_opset) for c in codes.values()}
    opset = max([t[3] for t in types.values()], default=0)
    ir = max([t[4] for t in types.values()], default=0)
    proto = _set_opset(proto, opset, ir) if codes else proto
    graph = proto.graph
    keep = [t for t in graph.initializer if t.name not in codes]
    added, nodes = [], []
    for name, c in codes.items():
        kind = types[name]
        dtype = getattr(ml_dtypes, kind[0]) if kind[0] != "int8" else np.int8
        added += [  # packed: two INT4 or four INT2 codes a byte
            numpy_helper.from_array(c.codes.astype(dtype), f"{name}_quantized"),
            numpy_helper.from_array(c.scale.astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros(c.scale.shape, dtype), f"{name}_zero_point"),
        ]
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [name], name=f"{name}_DequantizeLinear", axis=c.axis))
    del graph.initializer[:]
    graph.initializer.extend(keep + added)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)  # the dequantizations read initializers only: first
    return proto, {c.layer: types[name][0] for name, c in codes.items()}
