"""The artifact's header, and the bounds every file is checked against before any work.

A ``.slim`` file may come from anyone, so nothing it says is believed before it is
checked against sane bounds and against the file's own length:

- the magic bytes and format come first (a 3 GB file that is not ours is refused after
  13 bytes); the compressed header is at most :data:`MAX_HEADER_BYTES` and inflates to at
  most :data:`MAX_HEADER_JSON` (``decompressobj().decompress(data, max_length)``);
- every field has a type and a range (:data:`MAX_CLASSES`, :data:`MAX_INPUT_ELEMENTS`,
  :data:`MAX_LAYERS`, ...), checked while parsing;
- the model it names is built on PyTorch's ``meta`` device (shapes only, no memory) to
  count its tensors and run one forward pass of shapes: its elements must fit
  :data:`MAX_ELEMENTS` and what the file's length could hold, its activations at batch 1
  must fit :data:`MAX_ACTIVATIONS`, and the file may not be longer than that model's
  largest possible encoding. Only then is the real model built (and, for channel
  pruning, run once), and the payload read.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from slimtune.errors import ArtifactError, SlimtuneError
from slimtune.spaces.plan import CompressionPlan
from slimtune.trust import Trust

__all__ = ["MAGIC", "FORMAT_VERSION", "PREFIX", "CRC", "Header", "parse_head",
           "check_model_bounds", "READABLE_FORMATS", "MAX_HEADER_BYTES", "MAX_HEADER_JSON",
           "MAX_CLASSES",
           "MAX_INPUT_ELEMENTS", "MAX_ELEMENTS", "MAX_ACTIVATIONS", "ELEMENTS_PER_BYTE"]

MAGIC = b"SLIMTUNE"
#: the format this slimtune writes: 2 added entropy-coded streams (codec/streams.py)
FORMAT_VERSION = 2
#: the formats it reads
READABLE_FORMATS = (1, 2)
PREFIX = struct.Struct("<8sBI")  # magic, format, header length
CRC = struct.Struct("<I")

MAX_HEADER_BYTES = 1 << 20  # compressed header (a 1000-layer plan is ~20 kB)
MAX_HEADER_JSON = 4 << 20  # the header once inflated
MAX_NAME = 256  # characters of a model or layer name
MAX_CLASSES = 1 << 17  # 131072: ImageNet-21k has 21841
MAX_INPUT_DIMS = 3  # (features,) or (channels, height, width)
MAX_INPUT_ELEMENTS = 1 << 21  # one input example: 3 x 836 x 836, 1 x 1448 x 1448
MAX_LAYERS = 1 << 14
MAX_ELEMENTS = 1 << 28  # all tensors of the model: 268M (a 1 GB float32 model)
#: a file of n bytes may decode to at most ELEMENTS_PER_BYTE * n + SLACK elements: more
#: than 4096x smaller than float32 is more than any plan of the search reaches (90 %
#: sparse at 2 bits is about 40x on its own) and is what a decompression bomb looks like
ELEMENTS_PER_BYTE = 1024
ELEMENTS_SLACK = 1 << 16
MAX_ACTIVATIONS = 1 << 27  # outputs of every module in one batch-1 forward pass


def _refuse(msg: str) -> ArtifactError:
    return ArtifactError(f"the artifact's header is invalid: {msg}")


def _int(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise _refuse(f"`{low} <= {key} <= {high}` must hold, but got {key}={v!r:.60}")
    return v


@dataclass(frozen=True)
class Header:
    model: str
    num_classes: int
    input_shape: tuple[int, ...]
    plan: CompressionPlan
    #: the file's format (from its prefix, not its JSON): how the payload is read
    format: int = field(default=FORMAT_VERSION, compare=False)

    def to_bytes(self) -> bytes:
        return zlib.compress(json.dumps(self.to_dict(), separators=(",", ":")).encode(), 9)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "plan": self.plan.to_dict()}

    @classmethod
    def from_bytes(cls, raw: bytes) -> Header:
        """Inflate (at most :data:`MAX_HEADER_JSON` bytes) and validate every field."""
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(raw, MAX_HEADER_JSON)
        except zlib.error as exc:
            raise _refuse(f"not zlib data ({exc})") from None
        if inflater.unconsumed_tail:
            raise _refuse(f"it inflates to more than {MAX_HEADER_JSON} bytes")
        if not inflater.eof or inflater.unused_data:
            raise _refuse("its zlib stream is truncated or followed by other bytes")
        try:
            doc = json.loads(text.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise _refuse(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise _refuse("not a JSON object")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Header:
        model = doc.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= MAX_NAME:
            raise _refuse(f"`model` must be a name of 1..{MAX_NAME} characters, "
                          f"but got {model!r:.80}")
        num_classes = _int(doc, "num_classes", 1, MAX_CLASSES)
        shape = doc.get("input_shape")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_INPUT_DIMS
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                           for s in shape)
                or math.prod(shape) > MAX_INPUT_ELEMENTS):
            raise _refuse(f"`input_shape` must be 1 to {MAX_INPUT_DIMS} positive sizes of at "
                          f"most {MAX_INPUT_ELEMENTS} elements in all, but got {shape!r:.80}")
        plan_doc = doc.get("plan")
        layers = plan_doc.get("layers") if isinstance(plan_doc, dict) else None
        if not isinstance(layers, dict) or len(layers) > MAX_LAYERS or not all(
                isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in layers):
            raise _refuse(f"`plan` must hold at most {MAX_LAYERS} layers named by strings of "
                          f"1..{MAX_NAME} characters")
        try:
            plan = CompressionPlan.from_dict(plan_doc)
        except SlimtuneError as exc:
            raise _refuse(str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise _refuse(f"malformed plan ({exc})") from None
        return cls(model, num_classes, tuple(shape), plan)


def parse_head(buf: bytes, total: int) -> tuple[Header, int]:
    """The header of a file of ``total`` bytes from its first bytes ``buf`` (at least the
    prefix, then the whole header): checks magic, format and lengths before inflating.
    Returns the header and the offset where the payload starts."""
    if total < PREFIX.size + CRC.size or len(buf) < PREFIX.size:
        raise ArtifactError("not a slimtune artifact: file too short")
    magic, version, hlen = PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ArtifactError("not a slimtune artifact: bad magic bytes")
    if version not in READABLE_FORMATS:
        raise ArtifactError(
            f"artifact format {version} is not supported (this slimtune reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}; a newer slimtune may read it)")
    if hlen > MAX_HEADER_BYTES:
        raise _refuse(f"it claims {hlen} bytes, more than the {MAX_HEADER_BYTES} allowed")
    if PREFIX.size + hlen + CRC.size > total:
        raise ArtifactError("the artifact is truncated (header longer than the file)")
    if len(buf) < PREFIX.size + hlen:
        raise ArtifactError("the artifact is truncated (header longer than the file)")
    header = Header.from_bytes(bytes(buf[PREFIX.size:PREFIX.size + hlen]))
    return replace(header, format=version), PREFIX.size + hlen


def check_model_bounds(header: Header, total: int, payload_start: int,
                       base: nn.Module | None, trust: Trust, source: str) -> None:
    """Check, on the ``meta`` device (no memory, no arithmetic), that the model the header
    names fits the bounds and the file's length; see the module docstring."""
    from slimtune.compress.apply import plan_modules
    from slimtune.models.zoo import build_model

    try:
        with torch.device("meta"):
            model = base if base is not None else build_model(
                header.model, header.num_classes, header.input_shape, trust=trust,
                source=source)
    except SlimtuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - the header names a model that cannot be built
        raise _refuse(f"cannot build model `{header.model}` with {header.num_classes} "
                      f"classes for inputs {header.input_shape}: {type(exc).__name__}") from None
    try:
        plan_modules(model, header.plan)  # every plan layer is a Conv2d/Linear of the model
    except SlimtuneError as exc:
        raise _refuse(str(exc)) from None
    state = list(model.state_dict().values())
    elements = sum(t.numel() for t in state)
    cap = min(MAX_ELEMENTS, ELEMENTS_PER_BYTE * total + ELEMENTS_SLACK)
    if elements > cap:
        raise _refuse(f"model `{header.model}` has {elements:,} weights, more than a file of "
                      f"{total:,} bytes can hold (at most {cap:,})")
    # the largest encoding: every tensor raw (8 bytes an element at most) with a scale and
    # a bitmap index on top
    most = sum(t.numel() * (max(t.element_size(), 4) + 5) + 16 for t in state)
    if total > payload_start + most + CRC.size:
        raise ArtifactError(f"the artifact is {total:,} bytes, longer than the "
                            f"{payload_start + most + CRC.size:,} its header's model could need")
    if base is None:
        _check_activations(model, header)


def _check_activations(model: nn.Module, header: Header) -> None:
    """One forward pass of shapes on the meta device: the model must take the header's
    input shape, and its activations at batch 1 must fit :data:`MAX_ACTIVATIONS`."""
    total = 0

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *header.input_shape, device="meta"))
    except (NotImplementedError, TypeError):
        return  # an op with no meta kernel (user models only): the input bound still holds
    except Exception as exc:  # noqa: BLE001
        raise _refuse(f"model `{header.model}` cannot take inputs of shape "
                      f"{header.input_shape}: {' '.join(str(exc).split())[:200]}") from None
    finally:
        for h in hooks:
            h.remove()
    if total > MAX_ACTIVATIONS:
        raise _refuse(f"model `{header.model}` at input shape {header.input_shape} has "
                      f"{total:,} activations, more than the {MAX_ACTIVATIONS:,} allowed")
