"""The default search space of a model as an editable space file (``slimtune space``): one
rule per compressible layer with every knob at its default range, each layer's shape,
weights and MACs in a comment. Read back unchanged (``--space``), it is the default space."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from slimtune.knobs.base import Choices, FloatRange
from slimtune.spaces.space import SearchSpace

__all__ = ["space_template"]

_HEADER = """\
# slimtune search space{title}
# Give it to `slimtune search --space FILE`. Under `layers`, each key is a layer's name,
# "re:<regex>" (matched against whole names) or _default (the layers no rule matched); the
# first rule that matches a layer is its rule. In a rule, per knob: one value fixes it
# (keep_ratio: 1 turns channel pruning off, rank_ratio: 1 factorization), [low, high] is a
# range of a ratio, a list the allowed values (bits: [4, 8]); a knob a rule leaves out keeps
# its default range; `skip: true` leaves the layer untouched. Delete what you do not change.
version: 1
temperature: {temperature}   # distillation temperature: [low, high] (log scale) or a value
alpha: {alpha}          # weight of the distillation loss: [low, high] or a value
layers:"""


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k = "x".join(str(v) for v in module.kernel_size)
        return f"Conv2d {module.in_channels}->{module.out_channels}, {k}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def _value(r: FloatRange | Choices) -> str:
    if isinstance(r, FloatRange):
        return f"[{r.low:g}, {r.high:g}]"
    return json.dumps(list(r.values))


def space_template(model: nn.Module, input_shape: tuple[int, ...], pruning: str = "both",
                   knobs: tuple[str, ...] = (), title: str = "",
                   macs: Mapping[str, int] | None = None) -> str:
    """The space file of ``model``'s default space (YAML); ``macs``: each layer's MACs at
    batch 1, for its comment (``slimtune.objectives.flops.count_flops``)."""
    space = SearchSpace.from_model(model, input_shape, pruning, knobs)
    macs = macs or {}
    modules = dict(model.named_modules())
    out = [_HEADER.format(title=f" for {title}" if title else "",
                          temperature=f"[{space.temperature[0]:g}, {space.temperature[1]:g}]",
                          alpha=f"[{space.alpha[0]:g}, {space.alpha[1]:g}]")]
    for name in space.layers:
        mod: Any = modules[name]
        note = f"{_describe(mod)}; {mod.weight.numel():,} weights"
        if name in macs:
            note += f"; {macs[name]:,} MACs"
        if name in space.fixed_channels:
            note += "; an output layer: its channels are never pruned"
        out.append(f"  {json.dumps(name)}:   # {note}")
        for k in space.knobs_of(name):
            out.append(f"    {k}: {_value(space.range_of(k, name))}")
    if not space.layers:
        out.append("  {}")
    return "\n".join(out) + "\n"

