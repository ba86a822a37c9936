"""The compact artifact: what ``slimtune export`` writes and ``slimtune.load`` reads.

Layout (all integers little-endian)::

    b"SLIMTUNE" | u8 format | u32 header length | header | payload | u32 CRC-32

The header is zlib-compressed JSON naming the model (built-in name), its input shape,
class count and the compression plan. The payload holds the tensors of the compressed
model's state dict, in order, with no names: the loader rebuilds the structure from the
header and knows every tensor's shape. A compressed weight (a layer of the plan that is
pruned or below 32 bits) is stored as

    [per-output-channel float32 scales, if bits < 32]
    [bitmap of kept positions, 1 bit per weight, if pruned]
    non-zero (kept) values: float32, or integer codes packed at ``bits`` bits each

and every other tensor (biases, BatchNorm parameters and statistics, uncompressed weights)
raw in its dtype. Nothing is unpickled; the CRC catches truncation and tampering.

The size objective of the search is ``len(encode(...))``: the number on the front is the
byte length of this file.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.compress.apply import configs_of, plan_modules
from slimtune.compress.factorize import factorize
from slimtune.compress.plain import plain_copy
from slimtune.compress.prune import pruned_count
from slimtune.compress.quantize import dequantize, quantize_codes
from slimtune.compress.structured import channel_prune
from slimtune.errors import ArtifactError, SlimtuneError
from slimtune.models.zoo import build_model
from slimtune.spaces.plan import CompressionPlan

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "encode", "decode", "save", "load", "skeleton"]

MAGIC = b"SLIMTUNE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sBI")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    model: str
    num_classes: int
    input_shape: tuple[int, ...]
    plan: CompressionPlan

    def to_bytes(self) -> bytes:
        doc = {
            "model": self.model,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "plan": self.plan.to_dict(),
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Header:
        doc = json.loads(zlib.decompress(raw).decode())
        return cls(
            model=str(doc["model"]),
            num_classes=int(doc["num_classes"]),
            input_shape=tuple(int(s) for s in doc["input_shape"]),
            plan=CompressionPlan.from_dict(doc["plan"]),
        )


@dataclass(frozen=True)
class _Spec:
    bits: int
    masked: bool
    nnz: int  # kept weights: exact from the plan and the shape


def _weight_specs(plain: nn.Module, plan: CompressionPlan) -> dict[str, _Spec]:
    """State-dict key -> how it is stored, for every weight the plan compresses."""
    specs: dict[str, _Spec] = {}
    for mname, lp in plan_modules(plain, plan).items():
        numel = plain.get_submodule(mname).weight.numel()
        masked = pruned_count(numel, lp.sparsity) > 0
        if masked or lp.bits < 32:
            specs[f"{mname}.weight"] = _Spec(bits=lp.bits, masked=masked,
                                             nnz=numel - pruned_count(numel, lp.sparsity))
    return specs


def stored_weights(plain: nn.Module, plan: CompressionPlan) -> dict[str, tuple[int, int]]:
    """Module name -> (weights stored in the artifact, bits) for each compressed layer."""
    out = {}
    for mname, lp in plan_modules(plain, plan).items():
        numel = plain.get_submodule(mname).weight.numel()
        out[mname] = (numel - pruned_count(numel, lp.sparsity), lp.bits)
    return out


def skeleton(header: Header) -> nn.Module:
    """The compressed model's structure, weights unset: channel-pruned and factorized as
    the plan says (both depend on shapes only, never on weights)."""
    model = build_model(header.model, header.num_classes, header.input_shape)
    chan, fact, _, _ = configs_of(header.plan)
    if chan.keep_ratio:
        model = channel_prune(model, chan, header.input_shape, inplace=True)
    return factorize(model, fact, with_weights=False, inplace=True)


_BITMAP, _DELTA = 0, 1


def _encode_index(keep: np.ndarray) -> bytes:
    """The kept positions as a bitmap or as fixed-width gaps, whichever is smaller.

    bitmap: tag 0, 1 bit per weight. delta: tag 1, u8 width w, then the gaps between kept
    positions (``idx[i] - idx[i-1] - 1``, the first is ``idx[0]``) at w bits each.
    """
    bitmap = bytes([_BITMAP]) + np.packbits(keep, bitorder="little").tobytes()
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return bitmap
    gaps = np.diff(idx, prepend=-1) - 1
    width = max(1, int(gaps.max()).bit_length())
    if 2 + (len(idx) * width + 7) // 8 >= len(bitmap):
        return bitmap
    return bytes([_DELTA, width]) + _pack(gaps, width)


def _decode_index(reader: _Reader, n: int, nnz: int, key: str) -> np.ndarray:
    tag = reader.take(1)[0]
    if tag == _BITMAP:
        keep = np.unpackbits(np.frombuffer(reader.take(math.ceil(n / 8)), dtype=np.uint8),
                             count=n, bitorder="little").astype(bool)
        if int(keep.sum()) != nnz:
            raise ArtifactError(f"the artifact's sparsity bitmap for `{key}` is corrupted")
        return keep
    if tag != _DELTA:
        raise ArtifactError(f"the artifact has an unknown index coding for `{key}`")
    width = reader.take(1)[0]
    if not 1 <= width <= 32:
        raise ArtifactError(f"the artifact's sparse index for `{key}` is corrupted")
    idx = np.cumsum(_unpack(reader.take(math.ceil(nnz * width / 8)), nnz, width) + 1) - 1
    if nnz and idx[-1] >= n:
        raise ArtifactError(f"the artifact's sparse index for `{key}` is out of range")
    keep = np.zeros(n, dtype=bool)
    keep[idx] = True
    return keep


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers < 2**bits into bytes, ``bits`` bits each, LSB first."""
    codes = np.asarray(codes)
    if bits == 8:  # the same bytes as the general path, without the bit planes
        return codes.astype(np.uint8).tobytes()
    planes = np.empty((len(codes), bits), dtype=np.uint8)
    for b in range(bits):
        planes[:, b] = (codes >> b) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack(raw: bytes, count: int, bits: int) -> np.ndarray:
    buf = np.frombuffer(raw, dtype=np.uint8)
    if bits == 8:
        return buf[:count].astype(np.int64)
    planes = np.unpackbits(buf, count=count * bits, bitorder="little").reshape(count, bits)
    out = np.zeros(count, dtype=np.int64)
    for b in range(bits):
        out |= planes[:, b].astype(np.int64) << b
    return out


def _raw_bytes(t: torch.Tensor) -> bytes:
    arr = t.detach().cpu().contiguous().numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def encode(
    student: nn.Module,
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    plan: CompressionPlan,
) -> bytes:
    """Serialize a student made by ``compress.apply(model, plan)`` (fine-tuned or not)."""
    header = Header(model_name, int(num_classes), tuple(int(s) for s in input_shape), plan)
    plain, parts = plain_copy(student)
    specs = _weight_specs(plain, plan)
    for key, spec in specs.items():
        if key not in parts:
            raise SlimtuneError(f"weight `{key}` is not compressed as the plan says")
        _, mask, bits = parts[key]
        if bits != spec.bits or (mask is not None) != spec.masked:
            raise SlimtuneError(f"weight `{key}` is not compressed as the plan says")
    state = plain.state_dict()
    order = list(skeleton(header).state_dict())  # the loader's order, not the student's
    if sorted(order) != sorted(state):
        raise SlimtuneError("the student's structure does not match its plan and model")
    chunks: list[bytes] = []
    for key in order:
        tensor = state[key]
        spec = specs.get(key)
        if spec is None:
            chunks.append(_raw_bytes(tensor))
            continue
        w, mask, bits = parts[key]
        flat_keep = (mask.reshape(-1) > 0).numpy() if mask is not None else None
        if bits < 32:
            codes, scale = quantize_codes(w, bits)
            chunks.append(_raw_bytes(scale))
        if flat_keep is not None:
            chunks.append(_encode_index(flat_keep))
        if bits < 32:
            qmax = 2 ** (bits - 1) - 1
            c = codes.reshape(-1).numpy()
            if flat_keep is not None:
                c = c[flat_keep]
            chunks.append(_pack(c + qmax, bits))
        else:
            v = w.reshape(-1).numpy().astype("<f4")
            chunks.append((v[flat_keep] if flat_keep is not None else v).tobytes())
    hbytes = header.to_bytes()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)) + hbytes + b"".join(chunks)
    return body + _CRC.pack(zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ArtifactError("the artifact is truncated (payload shorter than its header says)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def decode(data: bytes) -> tuple[nn.Module, Header]:
    """Rebuild the module from artifact bytes; raises :class:`ArtifactError` if malformed."""
    if len(data) < _PREFIX.size + _CRC.size:
        raise ArtifactError("not a slimtune artifact: file too short")
    magic, version, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError("not a slimtune artifact: bad magic bytes")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format {version} is not supported (expected {FORMAT_VERSION})"
        )
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise ArtifactError("the artifact is corrupted or truncated (checksum mismatch)")
    end = len(data) - _CRC.size
    if _PREFIX.size + hlen > end:
        raise ArtifactError("the artifact is truncated (header longer than the file)")
    try:
        header = Header.from_bytes(data[_PREFIX.size : _PREFIX.size + hlen])
        model = skeleton(header)
    except SlimtuneError as exc:
        raise ArtifactError(f"the artifact's header is invalid: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zlib/json/shape errors all mean a bad header
        raise ArtifactError(f"the artifact's header is invalid: {exc}") from None
    reader = _Reader(data, _PREFIX.size + hlen, end)
    specs = _weight_specs(model, header.plan)
    state: dict[str, torch.Tensor] = {}
    for key, ref in model.state_dict().items():
        spec = specs.get(key)
        if spec is None:
            dt = ref.numpy().dtype.newbyteorder("<")
            arr = np.frombuffer(reader.take(ref.numel() * dt.itemsize), dtype=dt)
            state[key] = torch.from_numpy(arr.astype(dt.newbyteorder("="))).reshape(ref.shape)
            continue
        n, out = ref.numel(), ref.shape[0]
        if spec.bits < 32:
            scale = torch.from_numpy(
                np.frombuffer(reader.take(out * 4), dtype="<f4").astype(np.float32)
            )
            if not torch.isfinite(scale).all() or (scale <= 0).any():
                raise ArtifactError(f"the artifact holds invalid scales for `{key}`")
        keep = _decode_index(reader, n, spec.nnz, key) if spec.masked else np.ones(n, bool)
        nnz = spec.nnz
        if spec.bits < 32:
            qmax = 2 ** (spec.bits - 1) - 1
            codes = _unpack(reader.take(math.ceil(nnz * spec.bits / 8)), nnz, spec.bits) - qmax
            if nnz and (codes.max() > qmax or codes.min() < -qmax):
                raise ArtifactError(f"the artifact holds out-of-range codes for `{key}`")
            full = np.zeros(n, dtype=np.int64)
            full[keep] = codes
            state[key] = dequantize(torch.from_numpy(full).reshape(ref.shape), scale)
        else:
            vals = np.frombuffer(reader.take(nnz * 4), dtype="<f4")
            full_f = np.zeros(n, dtype=np.float32)
            full_f[keep] = vals
            state[key] = torch.from_numpy(full_f).reshape(ref.shape)
    if reader.pos != end:
        raise ArtifactError("the artifact has trailing bytes after its payload")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, header


def save(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_header(path: str | Path) -> Header:
    return decode(_read(path))[1]


def _read(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"no artifact at {p}")
    return p.read_bytes()


def load(path: str | Path) -> nn.Module:
    """The ``torch.nn.Module`` stored in an exported slimtune file (eval mode, CPU)."""
    return decode(_read(path))[0]


def header_dict(header: Header) -> dict[str, Any]:
    return {
        "model": header.model,
        "num_classes": header.num_classes,
        "input_shape": list(header.input_shape),
        "plan": header.plan.to_dict(),
    }
