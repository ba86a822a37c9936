"""The compact artifact: what ``slimtune export`` writes and ``slimtune.load`` reads.

Layout (all integers little-endian)::

    b"SLIMTUNE" | u8 format | u32 header length | header | payload | u32 CRC-32

The header (``export/header.py``, checked against bounds before anything is built) is
zlib-compressed JSON naming the model (a built-in, ``torchvision:`` or trusted user
name), its input shape, class count and the compression plan. The payload holds the
tensors of the compressed model's state dict, in order, with no names: the loader
rebuilds the structure from the header and knows every tensor's shape. A compressed
weight (a layer whose mask knobs zero some of it or whose bit-width is below 32) is
stored as its knobs write it (:mod:`slimtune.knobs`)::

    [values knob's prelude: per-output-channel float32 scales, if bits < 32]
    [each mask knob's index, in stage order: 2:4 patterns, then the unstructured index
     (the gaps between kept positions, over the positions kept so far)]
    kept values: float32, or integer codes of ``bits`` bits

and every other tensor (biases, BatchNorm parameters and statistics, uncompressed weights)
raw in its dtype. Indexes and codes are streams (:mod:`slimtune.codec.streams`): each is
stored fixed-width (codes packed at ``bits`` bits, a bitmap or gaps at one width, 3 bits a
2:4 pattern) or entropy-coded with its frequency table (:mod:`slimtune.codec.rans`),
whichever is smaller, and a tag byte says which. Nothing is unpickled; the CRC catches
truncation and tampering.

Format 2 (this one) added the entropy-coded streams and the tag on codes and patterns;
format 1 files (no entropy coding, untagged codes) still load, and :func:`transcode`
rewrites them.

The size objective of the search is ``len(encode(...))``: the number on the front is the
byte length of this file. It depends on the trained weights (how skewed the codes are);
``encode(..., entropy=False)`` is the fixed-width layout, an upper bound that depends on
the plan and the masks only (the budget check before training uses it).
"""

from __future__ import annotations

import copy
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from slimtune.codec import Reader as _Reader
from slimtune.codec import streams
from slimtune.compress.apply import plan_modules, skeleton_of
from slimtune.compress.plain import CompressedPart, plain_copy
from slimtune.errors import ArtifactError, SlimtuneError
from slimtune.export.header import (
    CRC,
    ELEMENTS_PER_BYTE,
    ELEMENTS_SLACK,
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER_BYTES,
    PREFIX,
    Header,
    check_model_bounds,
    parse_head,
)
from slimtune.files import write_atomic
from slimtune.knobs import MaskKnob, mask_knobs, values_knob
from slimtune.models.zoo import build_model
from slimtune.spaces.plan import CompressionPlan
from slimtune.trust import NO_TRUST, Trust

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "encode", "encode_plain", "decode", "save",
           "load", "skeleton", "read_artifact", "read_header", "stored_weights",
           "open_artifact", "load_with_header", "transcode", "streams_of", "Streams",
           "_Reader"]


@dataclass(frozen=True)
class _Spec:
    """How one compressed weight is stored: exact from the plan and the shape."""

    shape: tuple[int, ...]
    masks: tuple[tuple[MaskKnob, Any, int], ...]  # (knob, value, positions kept after it)
    bits: int  # the values knob's value
    nnz: int  # kept weights


def _weight_specs(plain: nn.Module, plan: CompressionPlan) -> dict[str, _Spec]:
    """State-dict key -> how it is stored, for every weight the plan compresses."""
    codec = values_knob()
    specs: dict[str, _Spec] = {}
    for mname, lp in plan_modules(plain, plan).items():
        shape = tuple(plain.get_submodule(mname).weight.shape)
        kept = int(np.prod(shape))
        masks = []
        for k in mask_knobs():
            if k.active(lp[k.name]):
                after = k.kept(shape, lp[k.name], kept)
                if after < kept:
                    masks.append((k, lp[k.name], after))
                    kept = after
        if masks or codec.active(lp[codec.name]):
            specs[f"{mname}.weight"] = _Spec(shape, tuple(masks), lp[codec.name], kept)
    return specs


def stored_weights(plain: nn.Module, plan: CompressionPlan) -> dict[str, tuple[int, int]]:
    """Module name -> (weights stored in the artifact, bits) for each compressed layer."""
    specs = _weight_specs(plain, plan)
    out = {}
    for mname, lp in plan_modules(plain, plan).items():
        spec = specs.get(f"{mname}.weight")
        numel = plain.get_submodule(mname).weight.numel()
        out[mname] = (spec.nnz, spec.bits) if spec else (numel, lp[values_knob().name])
    return out


def skeleton(header: Header, *, trust: Trust = NO_TRUST, source: str | None = None,
             base: nn.Module | None = None) -> nn.Module:
    """The compressed model's structure, weights unset: channel-pruned and factorized as
    the plan says (both depend on shapes only, never on weights).

    The model is ``base`` (a copy: an architecture instance the caller passes) or built
    from the header's name (through the trust boundary when ``source`` says the header
    came from a file)."""
    model = copy.deepcopy(base) if base is not None else build_model(
        header.model, header.num_classes, header.input_shape, trust=trust, source=source)
    return skeleton_of(model, header.plan, header.input_shape)


def _raw_bytes(t: torch.Tensor) -> bytes:
    arr = t.detach().cpu().contiguous().numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def encode(
    student: nn.Module,
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    plan: CompressionPlan,
    *,
    entropy: bool = True,
) -> bytes:
    """Serialize a student made by ``compress.apply(model, plan)`` (fine-tuned or not).
    ``entropy=False``: every stream fixed-width (the size's upper bound)."""
    header = Header(model_name, int(num_classes), tuple(int(s) for s in input_shape), plan)
    return encode_plain(*plain_copy(student), header, entropy=entropy)


def encode_plain(plain: nn.Module, parts: dict[str, CompressedPart], header: Header, *,
                 entropy: bool = True) -> bytes:
    """The artifact of ``plain_copy(student)``'s two results: the structure is the plain
    copy's (its state dict is in the order the loader's skeleton has)."""
    specs = _weight_specs(plain, header.plan)
    codec = values_knob()
    for key, spec in specs.items():
        part = parts.get(key)
        if part is None or set(part.masks) != {k.name for k, _, _ in spec.masks} \
                or part.values.get(codec.name, codec.default) != spec.bits:
            raise SlimtuneError(f"weight `{key}` is not compressed as the plan says")
    chunks: list[bytes] = []
    elements = 0
    for key, tensor in plain.state_dict().items():
        elements += tensor.numel()
        spec = specs.get(key)
        if spec is None:
            chunks.append(_raw_bytes(tensor))
            continue
        part = parts[key]
        chunks.append(codec.encode_prelude(part.weight, spec.bits))
        keep = np.ones(part.weight.numel(), dtype=bool)
        for k, value, kept in spec.masks:
            mask = (part.masks[k.name].reshape(-1) > 0).numpy()
            kind = k.index_kind(spec.shape, value, int(keep.sum()), kept)
            chunks.append(streams.write(kind, k.index_symbols(keep, mask, value, spec.shape),
                                        entropy=entropy))
            keep = keep & mask
        chunks.append(streams.write(codec.values_kind(spec.bits, spec.nnz),
                                    codec.values_symbols(part.weight, keep, spec.bits),
                                    entropy=entropy))
    data = _frame(header.to_bytes(), b"".join(chunks))
    if entropy and _too_dense(elements, len(data)):
        return encode_plain(plain, parts, header, entropy=False)
    return data


def _too_dense(elements: int, length: int) -> bool:
    """Whether the loader would refuse a file of ``length`` bytes holding ``elements``:
    a huge all-constant layer entropy-codes to almost nothing, which is what a
    decompression bomb looks like; the fixed-width layout is never that dense."""
    return elements > ELEMENTS_PER_BYTE * length + ELEMENTS_SLACK


def _frame(hbytes: bytes, payload: bytes, version: int = FORMAT_VERSION) -> bytes:
    body = PREFIX.pack(MAGIC, version, len(hbytes)) + hbytes + payload
    return body + CRC.pack(zlib.crc32(body))


def decode(data: bytes, *, trust: Trust = NO_TRUST, source: str = "the artifact",
           model: nn.Module | None = None, structure: nn.Module | None = None
           ) -> tuple[nn.Module, Header]:
    """Rebuild the module from artifact bytes; raises :class:`ArtifactError` if malformed.

    Bounded work first (:mod:`slimtune.export.header`): magic, header and every length
    are checked against the bytes' own length before the model is built. The header's
    model name is resolved through the trust boundary (``trust``; ``source`` names the
    file in messages), or ``model`` (an architecture instance of yours) is used instead.
    ``structure``: the compressed model's structure already built (the measuring path
    passes the plain copy it encoded; a copy of it is filled, no skeleton is rebuilt).
    """
    header, start = parse_head(data, len(data))
    _check_crc(data)
    if structure is not None:
        return _fill(data, header, start, copy.deepcopy(structure))
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
    return _fill(data, header, start, built)


def _fill(data: bytes, header: Header, start: int, built: nn.Module
          ) -> tuple[nn.Module, Header]:
    """``built`` (the compressed structure) with the weights of the payload."""
    state = _decode_payload(data, start, len(data) - CRC.size, built, header)
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # only with a caller's `model` of another architecture
        raise ArtifactError(f"the artifact does not fit the model passed: "
                            f"{' '.join(str(exc).split())[:200]}") from None
    built.eval()
    return built, header


def _decode_payload(data: bytes, start: int, end: int, model: nn.Module,
                    header: Header, log: list[streams.StreamRecord] | None = None
                    ) -> dict[str, torch.Tensor]:
    reader = _Reader(data, start, end, version=header.format, log=log)
    specs = _weight_specs(model, header.plan)
    codec = values_knob()
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
        codec_state = codec.decode(reader, spec.shape, spec.bits, key)
        keep = np.ones(ref.numel(), dtype=bool)
        for k, value, kept in spec.masks:
            kind = k.index_kind(spec.shape, value, int(keep.sum()), kept)
            keep = k.mask_of(streams.read(reader, kind, key), keep, value, spec.shape, key)
        values = streams.read(reader, codec.values_kind(spec.bits, spec.nnz), key)
        state[key] = codec.values_of(values, codec_state, keep, spec.shape, spec.bits, key)
    if reader.pos != end:
        raise ArtifactError("the artifact has trailing bytes after its payload")
    return state


class Streams(NamedTuple):
    header: Header
    start: int  # where the payload begins
    records: list[streams.StreamRecord]  # every stream, in file order
    model: nn.Module  # the model decoded


def streams_of(data: bytes, *, trust: Trust = NO_TRUST, source: str = "the artifact",
               model: nn.Module | None = None, structure: nn.Module | None = None
               ) -> Streams:
    """The header, payload start, every stream and the model of an artifact, read with
    the same checks as :func:`decode` (``structure``: the compressed model's structure,
    e.g. a model decoded from these bytes, so no skeleton is built)."""
    header, start = parse_head(data, len(data))
    _check_crc(data)
    if structure is not None:
        built = copy.deepcopy(structure)
    else:
        check_model_bounds(header, len(data), start, model, trust, source)
        built = _build(data, header, start, trust, source, model)[0]
    log: list[streams.StreamRecord] = []
    built.load_state_dict(_decode_payload(data, start, len(data) - CRC.size, built, header,
                                          log))
    return Streams(header, start, log, built.eval())


def transcode(data: bytes, *, entropy: bool = True, trust: Trust = NO_TRUST,
              model: nn.Module | None = None, structure: nn.Module | None = None) -> bytes:
    """The same model's artifact in the current format: every stream rewritten (fixed-width
    with ``entropy=False``, else the smaller form), every other byte as it was. The codes,
    scales and masks are the file's own, so a format-1 file becomes exactly the file
    :func:`encode` would now write for its student."""
    read = streams_of(data, trust=trust, model=model, structure=structure)
    pieces, pos = [], read.start
    for rec in read.records:
        if rec.kind.codable:
            pieces += [data[pos:rec.start], streams.write(rec.kind, rec.symbols,
                                                          entropy=entropy)]
            pos = rec.end
    pieces.append(data[pos:len(data) - CRC.size])
    out = _frame(data[PREFIX.size:read.start], b"".join(pieces))
    elements = sum(t.numel() for t in read.model.state_dict().values())
    if entropy and _too_dense(elements, len(out)):
        return transcode(data, entropy=False, trust=trust, model=model, structure=structure)
    return out


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


def open_artifact_bytes(data: bytes, where: str, *, trust: Trust = NO_TRUST,
                        model: nn.Module | None = None) -> tuple[nn.Module, Header]:
    """The module stored in the bytes ``data`` (read from ``where``: a store, a trial) and
    its header, with the same checks as a file's."""
    source = f"the artifact {where}"
    try:
        header, start = parse_head(data, len(data))
    except ArtifactError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
    check_model_bounds(header, len(data), start, model, trust, source)
    _check_crc(data)
    module, _ = _build(data, header, start, trust, source, model)
    return module, header


def load(path: str | Path, *, trust_module: str | list[str] | None = None,
         model: nn.Module | None = None) -> nn.Module:
    """The ``torch.nn.Module`` stored in an exported slimtune file (eval mode, CPU).

    The file names its model; a built-in or ``torchvision:`` name is rebuilt, a
    ``module:factory`` name only if you trust that module (``trust_module="mymodule"``),
    or pass the architecture yourself (``model=MyNet()``, before compression)."""
    return load_with_header(path, trust=Trust.of(trust_module), model=model)[0]

