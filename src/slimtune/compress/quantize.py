"""The quantize primitives, now in :mod:`slimtune.ops.quantize` (below the knobs that use them);
imported here under their old names."""

from slimtune.ops.quantize import FakeQuant, QuantizeConfig, dequantize, quantize, quantize_codes  # noqa: F401
