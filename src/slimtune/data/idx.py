"""IDX files (MNIST, Fashion-MNIST), raw or gzip, read with bounded work.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions),
one big-endian 32-bit size per dimension, then the values. The header is read and checked
first; the body is read only once its size is known to fit the file:

- a raw file must hold exactly as many bytes after the header as the header declares;
- a gzip file may not declare more values than its compressed size could inflate to
  (deflate expands at most about 1032:1), and its stream is read in bounded chunks that
  stop as soon as it runs past the declared size, so a "gzip bomb" costs at most
  ``count + 1`` bytes however far it would inflate.

Every problem is a :class:`DataError` naming the file, the rule and the value.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from slimtune.errors import DataError

__all__ = ["read_idx", "MAX_IDX_VALUES"]

#: the most values one IDX file may declare (1 GiB of unsigned bytes)
MAX_IDX_VALUES = 2**30
#: deflate's best case: one compressed byte inflates to at most about this many bytes
_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20  # bytes read from a gzip stream at a time
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzip if its name ends in ``.gz``, else raw) as a numpy
    array of its declared shape; :class:`DataError` if the file is malformed."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            return _read_gz(path)
        return _read_raw(path)
    except EOFError as exc:
        raise _bad(path, f"truncated: the gzip stream ends early ({exc})") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _bad(path, f"it is not valid gzip ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _bad(path: Path, rule: str) -> DataError:
    return DataError(f"{path} is not a valid IDX file: {rule}")


def _read_raw(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        dims, header = _read_header(f, path)
        count = _count(dims, path)
        body = size - header
        if body != count:
            raise _length_error(path, dims, count, body, header)
        return _read_body(f, path, dims, count, header)


def _read_gz(path: Path) -> np.ndarray:
    compressed = path.stat().st_size
    with gzip.open(path, "rb") as f:
        dims, header = _read_header(f, path)
        count = _count(dims, path)
        most = _DEFLATE_RATIO * compressed + 1024
        if count > most:
            raise _bad(path, f"its header declares {_declared(dims)}, more than a "
                             f"{compressed:,}-byte gzip file can hold (at most {most:,})")
        out = _read_body(f, path, dims, count, header)
        if f.read(1):
            raise _bad(path, f"trailing data: the stream is longer than its header says "
                             f"({_declared(dims)} after a {header}-byte header)")
        return out


def _read_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], int]:
    """The dimensions the header declares and the header's length in bytes."""
    magic = f.read(4)
    if len(magic) < 4:
        raise _bad(path, f"truncated: {len(magic)} bytes, shorter than the 4-byte magic")
    zero, dtype_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or dtype_code != _UBYTE or not 1 <= ndim <= 4:
        raise _bad(path, f"magic bytes {magic.hex(' ')} are not those of an unsigned-byte "
                         f"IDX file (00 00 08, then 1 to 4 dimensions)")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise _bad(path, f"truncated: the header declares {ndim} dimensions but the file "
                         f"ends inside them")
    return struct.unpack(f">{ndim}I", raw), 4 + 4 * ndim


def _count(dims: tuple[int, ...], path: Path) -> int:
    """The number of values ``dims`` declare, checked against sane bounds."""
    if dims[0] == 0:
        raise _bad(path, f"0 examples (its header declares {_shape(dims)})")
    if 0 in dims:
        raise _bad(path, f"its header declares a dimension of 0 ({_shape(dims)})")
    count = math.prod(dims)
    if count > MAX_IDX_VALUES:
        raise _bad(path, f"its header declares {_declared(dims)}, more than "
                         f"the {MAX_IDX_VALUES:,} an IDX file may hold")
    return count


def _read_body(f: BinaryIO, path: Path, dims: tuple[int, ...], count: int, header: int
               ) -> np.ndarray:
    """Exactly ``count`` bytes in chunks into an array of shape ``dims``; memory is taken
    only as bytes arrive (``np.empty`` does not touch its pages)."""
    out = np.empty(count, dtype=np.uint8)
    view = memoryview(out)
    pos = 0
    while pos < count:
        n = f.readinto(view[pos:min(pos + _CHUNK, count)])
        if not n:
            raise _length_error(path, dims, count, pos, header)
        pos += n
    return out.reshape(dims)


def _length_error(path: Path, dims: tuple[int, ...], count: int, found: int,
                  header: int) -> DataError:
    where = f"its {header}-byte header"
    if found < count:
        return _bad(path, f"truncated: its header declares {_declared(dims)}, but only "
                          f"{found:,} bytes follow {where}")
    return _bad(path, f"trailing data: {found:,} bytes follow {where}, longer than its "
                      f"header says ({_declared(dims)})")


def _shape(dims: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in dims)


def _declared(dims: tuple[int, ...]) -> str:
    """``"10 x 6 x 6 = 360 values"`` (or ``"10 values"`` for one dimension)."""
    count = math.prod(dims)
    return f"{count:,} values" if len(dims) == 1 else f"{_shape(dims)} = {count:,} values"
