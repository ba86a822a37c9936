"""Bit-width: per-output-channel symmetric quantization of a layer's kept weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from slimtune.codec import Reader
from slimtune.codec.streams import Codes, Floats, Kind
from slimtune.errors import ArtifactError, ConfigError
from slimtune.knobs.base import Choices, ValuesKnob

#: weight bit-widths the search chooses from; 32 means "keep float32"
ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 6, 8, 32)


class Bits(ValuesKnob):
    """``bits`` in 2..32 (32 = float32). In the artifact: per-output-channel float32
    scales, then (after the indexes) the kept values as a stream of codes of ``bits`` bits
    each (code + qmax: 0 .. 2 qmax), or as float32 at 32 bits."""

    name = "bits"
    default = 32
    stage = 40
    space = Choices(ALLOWED_BITS)
    always_stored = True
    ladder = (8, 6, 4, 3, 2)
    probes = (4, 2)

    def check(self, value: Any) -> int:
        ok = not isinstance(value, bool)
        try:
            ok = ok and 2 <= int(value) <= 32 and int(value) == value
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"`bits` must be an integer in 2..32, but got bits={value}")
        return int(value)

    def active(self, value: Any) -> bool:
        return value < 32

    def apply(self, model: Any, values: Mapping[str, Any], input_shape: Any) -> Any:
        from slimtune.ops.quantize import QuantizeConfig, quantize

        return quantize(model, QuantizeConfig(dict(values)), inplace=True)

    # -- the artifact --------------------------------------------------------------------
    def encode_prelude(self, weight: Any, value: Any) -> bytes:
        if value >= 32:
            return b""
        from slimtune.ops.quantize import quantize_codes

        return _raw(quantize_codes(weight, value)[1])

    def decode(self, reader: Reader, shape: tuple[int, ...], value: Any, key: str) -> Any:
        if value >= 32:
            return None
        import torch

        scale = torch.from_numpy(
            np.frombuffer(reader.take(shape[0] * 4), dtype="<f4").astype(np.float32))
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ArtifactError(f"the artifact holds invalid scales for `{key}`")
        return scale

    def values_kind(self, value: Any, kept: int) -> Kind:
        return Floats(kept) if value >= 32 else Codes(kept, value)

    def values_symbols(self, weight: Any, keep: np.ndarray, value: Any) -> np.ndarray:
        if value >= 32:
            return weight.reshape(-1).numpy().astype(np.float32)[keep]
        from slimtune.ops.quantize import quantize_codes

        qmax = 2 ** (value - 1) - 1
        return quantize_codes(weight, value)[0].reshape(-1).numpy()[keep].astype(np.int64) + qmax

    def values_of(self, symbols: np.ndarray, state: Any, keep: np.ndarray,
                  shape: tuple[int, ...], value: Any, key: str) -> Any:
        import torch

        n = len(keep)
        if value >= 32:
            full_f = np.zeros(n, dtype=np.float32)
            full_f[keep] = symbols
            return torch.from_numpy(full_f).reshape(shape)
        from slimtune.ops.quantize import dequantize

        qmax = 2 ** (value - 1) - 1
        codes = symbols - qmax
        if len(codes) and (codes.max() > qmax or codes.min() < -qmax):
            raise ArtifactError(f"the artifact holds out-of-range codes for `{key}`")
        full = np.zeros(n, dtype=np.int64)
        full[keep] = codes
        return dequantize(torch.from_numpy(full).reshape(shape), state)

    label = "bits"

    def summary(self, value: Any) -> str:
        return f"b={value}"

    def strength(self, value: Any) -> float:
        """32 bits: 0; each halving a quarter more, 2 bits: 1."""
        return min(1.0, max(0.0, (5.0 - math.log2(int(value))) / 4.0))


def _raw(t: Any) -> bytes:
    arr = t.detach().cpu().contiguous().numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


KNOB = Bits()
