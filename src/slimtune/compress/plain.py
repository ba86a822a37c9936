"""A plain (parametrization-free) copy of a compressed model.

``torch.nn.utils.parametrize.remove_parametrizations`` deletes the weight property from
the parametrized *class*, which a ``deepcopy`` shares with the original, so calling it on a
copy breaks the original. This module swaps the copy's class back instead, leaving the
original untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.compress.prune import MagnitudeMask
from slimtune.compress.quantize import FakeQuant, dequantize, quantize_codes

__all__ = ["CompressedPart", "plain_copy"]

#: per compressed weight: (masked float32 weight before quantization, mask or None, bits)
CompressedPart = tuple[torch.Tensor, torch.Tensor | None, int]


def plain_copy(
    model: nn.Module, *, quantized: bool = True
) -> tuple[nn.Module, dict[str, CompressedPart]]:
    """A CPU copy of ``model`` with every weight parametrization evaluated and removed.

    With ``quantized=True`` the copy's weights are the dequantized values the student
    computes with; the returned parts keep the unquantized masked weight so the exporter
    can derive codes and scales from it.
    """
    plain = copy.deepcopy(model).cpu()
    parts: dict[str, CompressedPart] = {}
    for mname, module in list(plain.named_modules()):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = module.parametrizations["weight"]
        w = plist.original.detach().to(torch.float32)
        mask, bits = None, 32
        for p in plist:
            if isinstance(p, MagnitudeMask):
                mask = p.mask.detach().to(torch.float32)
                w = w * mask
            elif isinstance(p, FakeQuant):
                bits = p.bits
        value = dequantize(*quantize_codes(w, bits)) if (quantized and bits < 32) else w
        module.__class__ = module.__class__.__bases__[0]  # the class before parametrization
        del module._modules["parametrizations"]
        module.weight = nn.Parameter(value.to(plist.original.dtype).clone())
        parts[f"{mname}.weight" if mname else "weight"] = (w, mask, bits)
    return plain, parts
