"""Bit-level building blocks of the artifact's payload (pure numpy, no torch).

- :func:`pack` / :func:`unpack`: non-negative integers at a fixed number of bits each;
- :func:`varint` / :meth:`Reader.varint`: unsigned LEB128 integers (at most 5 bytes);
- :class:`Reader`: bounded reads from the payload (a read past its end is an
  :class:`ArtifactError`, never an IndexError or a short slice). It knows the file's
  format version, and may keep a log of the streams read (:mod:`slimtune.codec.streams`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimtune.errors import ArtifactError

__all__ = ["Reader", "pack", "unpack", "varint"]


class Reader:
    """Sequential reads of ``data[start:end]`` of an artifact of format ``version``.

    ``log``: a list the stream reader appends a record of each stream to (None: no log).
    """

    def __init__(self, data: bytes, start: int, end: int, *, version: int = 2,
                 log: list[Any] | None = None) -> None:
        self.data, self.pos, self.end = data, start, end
        self.version, self.log = version, log

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ArtifactError("the artifact is truncated (payload shorter than its header says)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position, without consuming them."""
        return self.data[self.pos : min(self.pos + max(n, 0), self.end)]

    def varint(self, what: str) -> int:
        """An unsigned LEB128 integer of at most 5 bytes (< 2**35)."""
        value = 0
        for i in range(5):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise ArtifactError(f"the artifact's {what} is corrupted (a length of more than 5 bytes)")


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**35) as unsigned LEB128."""
    if not 0 <= value < 1 << 35:
        raise ValueError(f"`0 <= value < 2**35` must hold, but got value={value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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
