"""A plain (parametrization-free) copy of a compressed model.

``torch.nn.utils.parametrize.remove_parametrizations`` deletes the weight property from
the parametrized *class*, which a ``deepcopy`` shares with the original, so calling it on a
copy breaks the original. This module swaps the copy's class back instead, leaving the
original untouched.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["CompressedPart", "plain_copy"]


class CompressedPart(NamedTuple):
    """One compressed weight as the exporter needs it."""

    weight: torch.Tensor  # float32, every mask applied, before the values knob's coding
    masks: dict[str, torch.Tensor]  # mask knob name -> its 0/1 mask (all positions)
    values: dict[str, Any]  # values knob name -> its value (e.g. {"bits": 4})


def plain_copy(
    model: nn.Module, *, quantized: bool = True
) -> tuple[nn.Module, dict[str, CompressedPart]]:
    """A CPU copy of ``model`` with every weight parametrization evaluated and removed.

    Each parametrization a knob registers has ``knob`` (its name) and ``exact(w)``; a mask
    also ``mask``, a value coding ``value`` (and ``learned``: when it learned its own grid,
    the codes are those of its ``exact(w)``). With ``quantized=True`` the copy's weights are
    the values the artifact stores (dequantized); the returned parts keep the masked
    weight before coding, from which the exporter derives codes and scales. The copy's
    parameters keep the order of an uncompressed module (``weight`` before ``bias``).
    """
    plain = copy.deepcopy(model).cpu()
    parts: dict[str, CompressedPart] = {}
    for mname, module in list(plain.named_modules()):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = module.parametrizations["weight"]
        w = plist.original.detach().to(torch.float32)
        masks: dict[str, torch.Tensor] = {}
        values: dict[str, Any] = {}
        coded = None
        for p in plist:
            if hasattr(p, "mask"):
                masks[p.knob] = p.mask.detach().to(torch.float32)
                w = p.exact(w)
            else:
                values[p.knob] = p.value
                coded = p.exact(w if coded is None else coded)
                if getattr(p, "learned", False):
                    w = coded  # its own grid (learned clipping): the codes come from it
        value = coded if (quantized and coded is not None) else w
        module.__class__ = module.__class__.__bases__[0]  # the class before parametrization
        del module._modules["parametrizations"]
        rest = dict(module._parameters)
        module._parameters.clear()
        module.weight = nn.Parameter(value.to(plist.original.dtype).clone())
        module._parameters.update(rest)  # weight first, as the module made it
        parts[f"{mname}.weight" if mname else "weight"] = CompressedPart(w, masks, values)
    return plain, parts
