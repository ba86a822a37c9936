"""The streams of a compressed weight, each in its fixed-width or entropy-coded form.

A knob describes what it stores as a stream of one :class:`Kind` (its length and range
follow from the plan and the shape, never from the bytes) and hands over the symbols;
:func:`write` frames them, :func:`read` gives them back. The kinds:

- :class:`Codes`: quantized values, ``bits`` bits each (fixed: packed);
- :class:`Gaps`: which of ``positions`` are kept, as the gaps between kept positions
  (fixed: a bitmap or the gaps at one width, whichever is smaller);
- :class:`Patterns`: 2:4 patterns, one of 6 per group of four (fixed: 3 bits each);
- :class:`Floats`: float32 values (always raw: never entropy-coded).

In format 2 a codable stream starts with one tag byte: ``0`` the fixed form (for an index:
``0`` bitmap, ``1`` gaps at one width), ``2`` entropy-coded (:mod:`slimtune.codec.rans`).
The writer takes the coded form only where it is smaller. Format 1 had the index's tag
but no tag on codes or patterns (always fixed), and still reads.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from slimtune.codec import rans
from slimtune.codec.bits import Reader, pack, unpack
from slimtune.errors import ArtifactError

__all__ = ["Kind", "Codes", "Gaps", "Patterns", "Floats", "StreamRecord", "write", "read",
           "FIXED", "BITMAP", "DELTA", "CODED"]

FIXED = BITMAP = 0
DELTA = 1
CODED = 2


class Kind(ABC):
    """What a stream holds: ``count`` symbols, each in ``0 .. top``."""

    what: ClassVar[str]
    #: may be entropy-coded (and so carries a tag in format 2)
    codable: ClassVar[bool] = True
    #: carried a tag in format 1 already
    tagged_in_v1: ClassVar[bool] = False
    count: int
    top: int

    @abstractmethod
    def fixed(self, symbols: np.ndarray) -> bytes:
        """The fixed-width form, with its tag."""

    @abstractmethod
    def read_fixed(self, reader: Reader, tag: int, key: str) -> np.ndarray:
        """The symbols of the fixed-width form at ``reader`` (its tag already read)."""


@dataclass(frozen=True)
class Codes(Kind):
    count: int
    bits: int
    what: ClassVar[str] = "codes"

    @property
    def top(self) -> int:
        return (1 << self.bits) - 2  # codes + qmax lie in 0 .. 2 qmax

    def fixed(self, symbols: np.ndarray) -> bytes:
        return bytes([FIXED]) + pack(symbols, self.bits)

    def read_fixed(self, reader: Reader, tag: int, key: str) -> np.ndarray:
        return unpack(reader.take(math.ceil(self.count * self.bits / 8)), self.count,
                      self.bits)


@dataclass(frozen=True)
class Patterns(Kind):
    count: int  # groups of four
    what: ClassVar[str] = "2:4 index"
    BITS: ClassVar[int] = 3
    top: int = 5  # six ways to keep two of four

    def fixed(self, symbols: np.ndarray) -> bytes:
        return bytes([FIXED]) + pack(symbols, self.BITS)

    def read_fixed(self, reader: Reader, tag: int, key: str) -> np.ndarray:
        return unpack(reader.take((self.count * self.BITS + 7) // 8), self.count, self.BITS)


@dataclass(frozen=True)
class Gaps(Kind):
    """``count`` kept of ``positions``; symbol i is the number of positions skipped before
    the i-th kept one (``idx[i] - idx[i-1] - 1``, the first is ``idx[0]``)."""

    positions: int
    count: int  # kept
    what: ClassVar[str] = "sparse index"
    tagged_in_v1: ClassVar[bool] = True

    @property
    def top(self) -> int:
        return self.positions - self.count

    @staticmethod
    def of(keep: np.ndarray) -> np.ndarray:
        """The gaps of a flat bool mask."""
        return np.diff(np.flatnonzero(keep), prepend=-1) - 1

    def mask(self, gaps: np.ndarray, key: str) -> np.ndarray:
        """The flat bool mask over ``positions`` of ``gaps`` (checked against the range)."""
        idx = np.cumsum(gaps + 1) - 1
        if len(idx) != self.count or (self.count and idx[-1] >= self.positions):
            raise ArtifactError(f"the artifact's sparse index for `{key}` is out of range")
        keep = np.zeros(self.positions, dtype=bool)
        keep[idx] = True
        return keep

    def fixed(self, symbols: np.ndarray) -> bytes:
        keep = np.zeros(self.positions, dtype=bool)
        keep[np.cumsum(symbols + 1) - 1] = True
        bitmap = bytes([BITMAP]) + np.packbits(keep, bitorder="little").tobytes()
        if not self.count:
            return bitmap
        width = max(1, int(symbols.max()).bit_length())
        if 2 + (self.count * width + 7) // 8 >= len(bitmap):
            return bitmap
        return bytes([DELTA, width]) + pack(symbols, width)

    def read_fixed(self, reader: Reader, tag: int, key: str) -> np.ndarray:
        if tag == BITMAP:
            keep = np.unpackbits(np.frombuffer(reader.take(math.ceil(self.positions / 8)),
                                               dtype=np.uint8), count=self.positions,
                                 bitorder="little").astype(bool)
            if int(keep.sum()) != self.count:
                raise ArtifactError(f"the artifact's sparsity bitmap for `{key}` is corrupted")
            return self.of(keep)
        width = reader.take(1)[0]
        if not 1 <= width <= 32:
            raise ArtifactError(f"the artifact's sparse index for `{key}` is corrupted")
        return unpack(reader.take(math.ceil(self.count * width / 8)), self.count, width)


@dataclass(frozen=True)
class Floats(Kind):
    count: int
    what: ClassVar[str] = "float32 values"
    codable: ClassVar[bool] = False
    top: int = 0

    def fixed(self, symbols: np.ndarray) -> bytes:
        return np.asarray(symbols).astype("<f4").tobytes()

    def read_fixed(self, reader: Reader, tag: int, key: str) -> np.ndarray:
        vals = np.frombuffer(reader.take(self.count * 4), dtype="<f4")
        if not np.isfinite(vals).all():
            raise ArtifactError(f"the artifact holds non-finite values (NaN or inf) in `{key}`")
        return vals.astype(np.float32)


@dataclass(frozen=True)
class StreamRecord:
    """One stream as the reader found it (``Reader.log``): for the model card, the
    benchmark and :func:`slimtune.export.artifact.transcode`."""

    key: str  # the state-dict key of the weight
    kind: Kind
    start: int  # its bytes in the file: [start, end)
    end: int
    tag: int | None  # None: untagged (a format-1 stream, or float32 values)
    symbols: np.ndarray

    def summary(self) -> dict[str, Any]:
        """Its bytes as stored and fixed-width, and the zeroth-order entropy bound of its
        symbols in bytes (None for float32 values, which are never entropy-coded)."""
        return {"key": self.key, "stream": self.kind.what, "count": self.kind.count,
                "bytes": self.end - self.start, "coded": self.tag == CODED,
                "fixed_bytes": len(self.kind.fixed(self.symbols)),
                "entropy_bytes": rans.entropy_bits(self.symbols) / 8
                if self.kind.codable else None}


def write(kind: Kind, symbols: np.ndarray, *, entropy: bool = True) -> bytes:
    """The stream of ``symbols``: the fixed form, or (``entropy``) the entropy-coded one
    where it is smaller."""
    fixed = kind.fixed(symbols)
    if not entropy or not kind.codable or not kind.count:
        return fixed
    coded = bytes([CODED]) + rans.encode(symbols)
    return coded if len(coded) < len(fixed) else fixed


def read(reader: Reader, kind: Kind, key: str) -> np.ndarray:
    """The symbols of the stream of ``kind`` at ``reader`` (the weight ``key``'s)."""
    start = reader.pos
    tag: int | None = None
    if kind.codable and (reader.version >= 2 or kind.tagged_in_v1):
        tag = reader.take(1)[0]
    if tag == CODED and reader.version >= 2 and kind.count:
        symbols = rans.decode(reader, kind.count, kind.top, f"{kind.what} of `{key}`")
    elif tag in (None, FIXED) or (tag == DELTA and isinstance(kind, Gaps)):
        symbols = kind.read_fixed(reader, FIXED if tag is None else tag, key)
    else:
        raise ArtifactError(f"the artifact has an unknown coding ({tag}) for the "
                            f"{kind.what} of `{key}`")
    if reader.log is not None:
        reader.log.append(StreamRecord(key, kind, start, reader.pos, tag, symbols))
    return symbols
