"""The compact artifact: what ``slimtune export`` writes and ``slimtune.load`` reads.

Layout (all integers little-endian)::

    b"SLIMTUNE" | u8 format | u32 header length | header | payload | u32 CRC-32

The header (``export/header.py``, checked against bounds before anything is built) is
zlib-compressed JSON naming the model (a built-in, ``torchvision:`` or trusted user
name), its input shape, class count and the compression plan. The payload holds the
tensors of the compressed model's state dict, in order, with no names: the loader
rebuilds the structure from the header and knows every tensor's shape. A compressed
weight (a layer of the plan that is pruned or below 32 bits) is stored as

    [per-output-channel float32 scales, if bits < 32]
    [bitmap of kept positions, 1 bit per weight, if pruned]
    non-zero (kept) values: float32, or integer codes packed at ``bits`` bits each

and every other tensor (biases, BatchNorm parameters and statistics, uncompressed weights)
raw in its dtype. Nothing is unpickled; the CRC catches truncation and tampering.

The size objective of the search is ``len(encode(...))``: the number on the front is the
byte length of this file.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

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
from slimtune.export.header import (
    CRC,
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER_BYTES,
    PREFIX,
    Header,
    check_model_bounds,
    parse_head,
)
from slimtune.files import write_atomic
from slimtune.models.zoo import build_model
from slimtune.spaces.plan import CompressionPlan
from slimtune.trust import NO_TRUST, Trust

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "encode", "decode", "save", "load", "skeleton",
           "read_artifact", "read_header", "header_dict", "stored_weights", "open_artifact",
           "load_with_header"]

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


def skeleton(header: Header, *, trust: Trust = NO_TRUST, source: str | None = None,
             base: nn.Module | None = None) -> nn.Module:
    """The compressed model's structure, weights unset: channel-pruned and factorized as
    the plan says (both depend on shapes only, never on weights).

    The model is ``base`` (a copy: an architecture instance the caller passes) or built
    from the header's name (through the trust boundary when ``source`` says the header
    came from a file)."""
    import copy

    model = copy.deepcopy(base) if base is not None else build_model(
        header.model, header.num_classes, header.input_shape, trust=trust, source=source)
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
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)) + hbytes + b"".join(chunks)
    return body + CRC.pack(zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ArtifactError("the artifact is truncated (payload shorter than its header says)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def decode(data: bytes, *, trust: Trust = NO_TRUST, source: str = "the artifact",
           model: nn.Module | None = None) -> tuple[nn.Module, Header]:
    """Rebuild the module from artifact bytes; raises :class:`ArtifactError` if malformed.

    Bounded work first (:mod:`slimtune.export.header`): magic, header and every length
    are checked against the bytes' own length before the model is built. The header's
    model name is resolved through the trust boundary (``trust``; ``source`` names the
    file in messages), or ``model`` (an architecture instance of yours) is used instead.
    """
    header, start = parse_head(data, len(data))
    _check_crc(data)
    check_model_bounds(header, len(data), start, model, trust, source)
    return _build(data, header, start, trust, source, model)


def _check_crc(data: bytes) -> None:
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(memoryview(data)[: -CRC.size]) != crc:
        raise ArtifactError("the artifact is corrupted or truncated (checksum mismatch)")


def _build(data: bytes, header: Header, start: int, trust: Trust, source: str,
           model: nn.Module | None) -> tuple[nn.Module, Header]:
    """The model of bytes whose header, bounds and checksum have been checked."""
    try:
        built = skeleton(header, trust=trust, source=source, base=model)
    except SlimtuneError as exc:
        raise ArtifactError(f"the artifact's header is invalid: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plan the model cannot take
        raise ArtifactError(f"the artifact's header is invalid: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}") from None
    state = _decode_payload(data, start, len(data) - CRC.size, built, header)
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # only with a caller's `model` of another architecture
        raise ArtifactError(f"the artifact does not fit the model passed: "
                            f"{' '.join(str(exc).split())[:200]}") from None
    built.eval()
    return built, header


def _decode_payload(data: bytes, start: int, end: int, model: nn.Module,
                    header: Header) -> dict[str, torch.Tensor]:
    reader = _Reader(data, start, end)
    specs = _weight_specs(model, header.plan)
    state: dict[str, torch.Tensor] = {}
    for key, ref in model.state_dict().items():
        spec = specs.get(key)
        if spec is None:
            dt = ref.numpy().dtype.newbyteorder("<")
            arr = np.frombuffer(reader.take(ref.numel() * dt.itemsize), dtype=dt)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ArtifactError(f"the artifact holds non-finite values (NaN or inf) in "
                                    f"`{key}`")
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
            if not np.isfinite(vals).all():
                raise ArtifactError(f"the artifact holds non-finite values (NaN or inf) in "
                                    f"`{key}`")
            full_f = np.zeros(n, dtype=np.float32)
            full_f[keep] = vals
            state[key] = torch.from_numpy(full_f).reshape(ref.shape)
    if reader.pos != end:
        raise ArtifactError("the artifact has trailing bytes after its payload")
    return state


def save(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory,
    renamed at the end and removed on failure (a full disk leaves nothing half-written)."""
    write_atomic(Path(path), data, "artifact")


def read_artifact(path: str | Path, *, trust: Trust = NO_TRUST,
                  model: nn.Module | None = None) -> bytes:
    """The bytes of the artifact at ``path``, read with bounded work: the prefix and the
    header are read and checked first, then the rest only if the file's length fits the
    model its header names."""
    return _read_checked(Path(path), trust, model)[0]


def _read_checked(p: Path, trust: Trust, model: nn.Module | None
                  ) -> tuple[bytes, Header, int]:
    source = f"the artifact {p}"
    if not p.is_file():
        raise ArtifactError(f"no artifact at {p}")
    try:
        with open(p, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            head = f.read(PREFIX.size)
            if len(head) == PREFIX.size:
                magic, _, hlen = PREFIX.unpack(head)
                if magic == MAGIC and hlen <= MAX_HEADER_BYTES:
                    head += f.read(hlen)
            header, start = parse_head(head, total)  # checks magic before reading more
            check_model_bounds(header, total, start, model, trust, source)
            rest = f.read(total - len(head))
    except OSError as exc:
        raise ArtifactError(f"cannot read {p}: {exc.strerror or exc}") from None
    data = head + rest
    if len(data) != total:
        raise ArtifactError(f"{p} changed while it was read")
    return data, header, start


def read_header(path: str | Path, *, trust: Trust = NO_TRUST) -> Header:
    return load_with_header(path, trust=trust)[1]


def load_with_header(path: str | Path, *, trust: Trust = NO_TRUST,
                     model: nn.Module | None = None) -> tuple[nn.Module, Header]:
    """The module stored at ``path`` and its header (bounded reading, trust boundary)."""
    module, header, _ = open_artifact(path, trust=trust, model=model)
    return module, header


def open_artifact(path: str | Path, *, trust: Trust = NO_TRUST,
                  model: nn.Module | None = None) -> tuple[nn.Module, Header, bytes]:
    """The module stored at ``path``, its header and the file's bytes, read once with
    bounded work and checked once."""
    data, header, start = _read_checked(Path(path), trust, model)  # bounds checked
    _check_crc(data)
    module, _ = _build(data, header, start, trust, f"the artifact {Path(path)}", model)
    return module, header, data


def load(path: str | Path, *, trust_module: str | list[str] | None = None,
         model: nn.Module | None = None) -> nn.Module:
    """The ``torch.nn.Module`` stored in an exported slimtune file (eval mode, CPU).

    The file names its model; a built-in or ``torchvision:`` name is rebuilt, a
    ``module:factory`` name only if you trust that module (``trust_module="mymodule"``),
    or pass the architecture yourself (``model=MyNet()``, before compression)."""
    return load_with_header(path, trust=Trust.of(trust_module), model=model)[0]


def header_dict(header: Header) -> dict[str, object]:
    return header.to_dict()
