"""CIFAR-10's python batches, read by slimtune with a restricted unpickler.

The batches (``cifar-10-batches-py/data_batch_1`` .. ``_5`` and ``test_batch``) are Python
pickles of a dict ``{"data": N x 3072 uint8 array, "labels": N ints, ...}``. Each file is
read exactly once, by :class:`_BatchUnpickler`, which builds nothing but numpy arrays,
dtypes and the plain containers pickle makes by itself; any other global (``os.system``,
a class, a function) is refused before it is called. The arrays are then checked (shape,
type, label range) and used as they are: no second, unrestricted ``pickle.load`` ever sees
the file. ``batches.meta`` (the class names) is not needed and not read.

Accepted: the official batches (protocol 2 pickles written by Python 2, whose keys come
back as ``str`` with ``encoding="latin1"``) and batches written by Python 3 with any
protocol, with ``str`` or ``bytes`` keys.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.errors import DataError

__all__ = ["CIFAR_FILES", "TRAIN_FILES", "TEST_FILE", "MAX_BATCH_BYTES", "read_batch",
           "read_batches"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CIFAR_FILES = (*TRAIN_FILES, TEST_FILE)
#: an official batch is 31 MB; a file over this is refused before it is unpickled
MAX_BATCH_BYTES = 256 * 2**20
_PIXELS = 3 * 32 * 32
_CLASSES = 10


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 call
    to rebuild ``bytes``. Only the latin-1 case is accepted: the real function looks the
    codec up by name, which can import modules."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"refusing to load _codecs.encode({type(text).__name__}, {encoding!r}): only "
            "latin-1 text, as pickle writes bytes, is allowed")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Refuses every global but the numpy pieces a batch is made of."""

    NUMPY = {("numpy.core.multiarray", "_reconstruct"),
             ("numpy._core.multiarray", "_reconstruct"),
             ("numpy.core.numeric", "_frombuffer"),  # protocol 5
             ("numpy._core.numeric", "_frombuffer"),
             ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in self.NUMPY:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(images N x 3 x 32 x 32 uint8, labels N int64)``; :class:`DataError`
    naming the file and the rule if it is not a CIFAR-10 batch."""
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise DataError(f"{path} is not a CIFAR-10 python batch: it is {size:,} bytes, more "
                        f"than the {MAX_BATCH_BYTES:,} a batch may be")
    try:
        with open(path, "rb") as f:
            doc = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a batch
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    return _arrays(doc, path)


def _arrays(doc: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The checked images and labels of an unpickled batch."""
    def bad(rule: str) -> DataError:
        return DataError(f"{path} is not a CIFAR-10 python batch: {rule}")

    if not isinstance(doc, dict):
        raise bad(f"it holds a {type(doc).__name__}, not a dict")
    doc = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in doc.items()}
    data = doc.get("data")
    labels = doc.get("labels", doc.get("fine_labels"))
    if data is None or labels is None:
        raise bad("no `data` / `labels` entries")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _PIXELS:
        raise bad(f"`data` must be an N x {_PIXELS} uint8 array, but is "
                  f"{_describe(data)}")
    y = _labels(labels, bad)
    if len(y) != len(data):
        raise bad(f"it has {len(data)} images but {len(y)} labels")
    return data.reshape(-1, 3, 32, 32), y


def _labels(labels: object, bad: Any) -> np.ndarray:
    """``labels`` (a list of ints, or a 1-D integer array) as int64 in 0..9."""
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    else:
        ok = isinstance(labels, list | tuple) and all(
            type(v) is int for v in labels)  # not bool, not float
    if not ok:
        raise bad(f"`labels` must be a list of ints, but is {_describe(labels)}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) and (y.min() < 0 or y.max() >= _CLASSES):
        v = int(y.min()) if y.min() < 0 else int(y.max())
        raise bad(f"labels must be classes 0..{_CLASSES - 1}, but one is {v}")
    return y


def _describe(v: object) -> str:
    if isinstance(v, np.ndarray):
        return f"a {v.dtype} array of shape {v.shape}"
    return f"a {type(v).__name__}"


def read_batches(batches: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training batches (concatenated in order) and the test batch of
    ``cifar-10-batches-py``: ``(x_train, y_train, x_test, y_test)``."""
    train = [read_batch(batches / f) for f in TRAIN_FILES]
    x_test, y_test = read_batch(batches / TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test
