"""How the artifact's payload is coded (pure numpy, no torch).

- :mod:`slimtune.codec.bits`: fixed-width packing, varints and the bounded :class:`Reader`;
- :mod:`slimtune.codec.rans`: the entropy coder (static rANS with its frequency table);
- :mod:`slimtune.codec.streams`: the stream kinds a knob stores (codes, a sparse index,
  2:4 patterns, float32 values), each written in its fixed-width or entropy-coded form.

Knobs (:mod:`slimtune.knobs`) say which streams a compressed weight has; the artifact
(:mod:`slimtune.export.artifact`) frames them.
"""

from slimtune.codec.bits import Reader, pack, unpack, varint

__all__ = ["Reader", "pack", "unpack", "varint"]
