"""What an artifact's bytes are spent on: per compressed weight, its streams (index and
values), how each is stored (fixed-width or entropy-coded) and what it costs per weight;
for the whole file, its size, its fixed-width size and its bits per stored weight. The
model card's ``storage`` and the entropy-coding benchmark read it."""

from __future__ import annotations

from typing import Any

from torch import nn

from slimtune.codec.streams import CODED
from slimtune.export.artifact import stored_weights, streams_of
from slimtune.units import bits_per_weight

__all__ = ["layout", "storage"]


def layout(data: bytes, **kwargs: Any) -> list[dict[str, Any]]:
    """Each stream of an artifact (in file order): its weight, what it holds, its symbol
    count, its bytes as stored, whether it is entropy-coded, its bytes fixed-width, and the
    zeroth-order entropy of its symbols in bytes (the bound a coder without context
    approaches). ``kwargs``: as :func:`slimtune.export.artifact.streams_of`."""
    return [rec.summary() for rec in streams_of(data, **kwargs).records]


def storage(data: bytes, model: nn.Module) -> dict[str, Any]:
    """The file ``data`` of the compressed model ``model`` (decoded from it): its format,
    bytes, fixed-width bytes (every stream fixed-width: the upper bound the search's
    budget check used), weights stored (the kept ones of each compressed Conv2d/Linear, all
    of any other), bits per stored weight, and per compressed weight its streams."""
    read = streams_of(data, structure=model)
    header, log = read.header, read.records
    fixed_len = [len(r.kind.fixed(r.symbols)) for r in log]
    fixed = len(data) + sum(f - (r.end - r.start) for r, f in zip(log, fixed_len, strict=True))
    kept = stored_weights(model, header.plan)
    total = sum(kept[n][0] if n in kept else m.weight.numel()
                for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear))
    weights: dict[str, dict[str, Any]] = {}
    for rec, rec_fixed in zip(log, fixed_len, strict=True):
        w = weights.setdefault(rec.key, {"weight": rec.key, "stored": 0, "bytes": 0,
                                         "streams": []})
        w["bytes"] += rec.end - rec.start
        w["stored"] = rec.kind.count  # the values' stream comes last: the kept weights
        w["streams"].append({"stream": rec.kind.what, "coding": "entropy" if rec.tag == CODED
                             else "fixed", "bytes": rec.end - rec.start,
                             "fixed_bytes": rec_fixed})
    for w in weights.values():
        w["bits_per_weight"] = bits_per_weight(w["bytes"], w["stored"])
    return {"format": header.format, "size_bytes": len(data), "fixed_size_bytes": fixed,
            "stored_weights": total, "bits_per_weight": bits_per_weight(len(data), total),
            "weights": list(weights.values())}
