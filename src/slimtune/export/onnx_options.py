"""What ``--onnx`` asks for: which ONNX files to write beside an artifact, and how.

Plain data (no torch, no onnx imports): the CLI and ``export``'s output-path check read it
before anything heavy is loaded. The files are written by :mod:`slimtune.export.onnx`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError

__all__ = ["OnnxOptions", "FORMATS", "onnx_path", "MAX_OPSET", "MIN_OPSET",
           "CALIBRATION_IMAGES", "MIN_CALIBRATION"]

#: format -> what its file holds (``--onnx``)
FORMATS: dict[str, str] = {
    "float": "float32 weights (dequantized)",
    "lowbit": "each quantized layer's weights as INT2/INT4/INT8 codes with per-channel "
              "scales (DequantizeLinear), float32 activations",
    "qdq": "int8 weights and activations (static QDQ, calibrated on training images): "
           "ONNX Runtime's integer kernels",
}
#: the highest opset a lowbit file may need (INT2 weights); INT4 needs 21, INT8 13
MAX_OPSET = 25
MIN_OPSET = 20  # what the torch.export-based exporter writes
#: training images a qdq file's activation ranges are calibrated on, by default
CALIBRATION_IMAGES = 256
#: fewer calibration images than this give activation ranges of one batch's chance
MIN_CALIBRATION = 16


def onnx_path(out: str | Path, fmt: str) -> Path:
    """Where ``export --onnx FMT`` writes beside the artifact ``out``: ``PATH.onnx`` for
    float, ``PATH.FMT.onnx`` for the others."""
    out = Path(out)
    return out.with_suffix(".onnx") if fmt == "float" else out.with_suffix(f".{fmt}.onnx")


@dataclass(frozen=True)
class OnnxOptions:
    """The ONNX files to write (``formats``, none: no ONNX), the highest opset a lowbit file
    may use, and how many training images a qdq file is calibrated on."""

    formats: tuple[str, ...] = ()
    max_opset: int = MAX_OPSET
    calibration: int = CALIBRATION_IMAGES

    def __post_init__(self) -> None:
        formats = tuple(self.formats)
        object.__setattr__(self, "formats", formats)
        bad = [f for f in formats if f not in FORMATS]
        if bad or len(set(formats)) != len(formats):
            raise ConfigError(
                f"`--onnx` must be a comma-separated list of {', '.join(FORMATS)}, each once, "
                f"but got {','.join(formats)!r}")
        if isinstance(self.max_opset, bool) or not MIN_OPSET <= int(self.max_opset) <= MAX_OPSET:
            raise ConfigError(f"`--onnx-opset` must be in {MIN_OPSET}..{MAX_OPSET}, but got "
                              f"{self.max_opset!r}")
        if isinstance(self.calibration, bool) or int(self.calibration) < MIN_CALIBRATION:
            raise ConfigError(f"`--calibration` must be at least {MIN_CALIBRATION} images, "
                              f"but got {self.calibration!r}")

    @classmethod
    def of(cls, onnx: Any, **kwargs: Any) -> OnnxOptions:
        """From ``export``'s ``onnx=`` argument: False/None (none), True (float), a
        comma-separated string, an iterable of format names, or an :class:`OnnxOptions`."""
        if isinstance(onnx, OnnxOptions):
            return onnx
        if onnx is None or onnx is False:
            formats: Iterable[str] = ()
        elif onnx is True:
            formats = ("float",)
        elif isinstance(onnx, str):
            formats = [f.strip() for f in onnx.split(",") if f.strip()] or [onnx]
        else:
            formats = tuple(onnx)
        return cls(tuple(formats), **kwargs)

    def paths(self, out: str | Path) -> dict[str, Path]:
        """Format -> the file it is written to."""
        return {f: onnx_path(out, f) for f in self.formats}
