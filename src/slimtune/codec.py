"""Bit-level building blocks of the artifact's payload (pure numpy, no torch).

- :func:`pack` / :func:`unpack`: non-negative integers at a fixed number of bits each;
- :func:`encode_index` / :func:`decode_index`: which of ``n`` positions are kept, as a
  bitmap or as fixed-width gaps, whichever is smaller;
- :class:`Reader`: bounded reads from the payload (a read past its end is an
  :class:`ArtifactError`, never an IndexError or a short slice).

Knobs (:mod:`slimtune.knobs`) write their part of a compressed weight with these; the
artifact (:mod:`slimtune.export.artifact`) frames the parts.
"""

from __future__ import annotations

import math

import numpy as np

from slimtune.errors import ArtifactError

__all__ = ["Reader", "pack", "unpack", "encode_index", "decode_index", "BITMAP", "DELTA"]

BITMAP, DELTA = 0, 1  # the tag byte of a sparse index


class Reader:
    """Sequential reads of ``data[start:end]``."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ArtifactError("the artifact is truncated (payload shorter than its header says)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers < 2**bits into bytes, ``bits`` bits each, LSB first."""
    codes = np.asarray(codes)
    if bits == 8:  # the same bytes as the general path, without the bit planes
        return codes.astype(np.uint8).tobytes()
    planes = np.empty((len(codes), bits), dtype=np.uint8)
    for b in range(bits):
        planes[:, b] = (codes >> b) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack(raw: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` integers :func:`pack` wrote at ``bits`` bits each (int64)."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    if bits == 8:
        return buf[:count].astype(np.int64)
    planes = np.unpackbits(buf, count=count * bits, bitorder="little").reshape(count, bits)
    out = np.zeros(count, dtype=np.int64)
    for b in range(bits):
        out |= planes[:, b].astype(np.int64) << b
    return out


def encode_index(keep: np.ndarray) -> bytes:
    """The kept positions as a bitmap or as fixed-width gaps, whichever is smaller.

    bitmap: tag 0, 1 bit per position. delta: tag 1, u8 width w, then the gaps between kept
    positions (``idx[i] - idx[i-1] - 1``, the first is ``idx[0]``) at w bits each.
    """
    bitmap = bytes([BITMAP]) + np.packbits(keep, bitorder="little").tobytes()
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return bitmap
    gaps = np.diff(idx, prepend=-1) - 1
    width = max(1, int(gaps.max()).bit_length())
    if 2 + (len(idx) * width + 7) // 8 >= len(bitmap):
        return bitmap
    return bytes([DELTA, width]) + pack(gaps, width)


def decode_index(reader: Reader, n: int, nnz: int, key: str) -> np.ndarray:
    """The boolean mask of :func:`encode_index` over ``n`` positions, ``nnz`` of them kept
    (checked: a corrupted index is an :class:`ArtifactError` naming ``key``)."""
    tag = reader.take(1)[0]
    if tag == BITMAP:
        keep = np.unpackbits(np.frombuffer(reader.take(math.ceil(n / 8)), dtype=np.uint8),
                             count=n, bitorder="little").astype(bool)
        if int(keep.sum()) != nnz:
            raise ArtifactError(f"the artifact's sparsity bitmap for `{key}` is corrupted")
        return keep
    if tag != DELTA:
        raise ArtifactError(f"the artifact has an unknown index coding for `{key}`")
    width = reader.take(1)[0]
    if not 1 <= width <= 32:
        raise ArtifactError(f"the artifact's sparse index for `{key}` is corrupted")
    idx = np.cumsum(unpack(reader.take(math.ceil(nnz * width / 8)), nnz, width) + 1) - 1
    if nnz and idx[-1] >= n:
        raise ArtifactError(f"the artifact's sparse index for `{key}` is out of range")
    keep = np.zeros(n, dtype=bool)
    keep[idx] = True
    return keep
