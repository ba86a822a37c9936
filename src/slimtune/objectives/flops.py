"""FLOPs objective: multiply-accumulates of one forward pass at batch 1, counted by thop."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

__all__ = ["flops"]


def flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Dense MACs at batch 1 (zeros in the weights are counted: thop ignores sparsity).

    Parametrized (masked / fake-quantized) layers are counted by their plain shapes.
    """
    import thop

    from slimtune.compress.plain import plain_copy

    plain = plain_copy(model)[0].eval()
    x = torch.zeros(1, *input_shape)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        macs, _ = thop.profile(plain, inputs=(x,), verbose=False)
    return int(macs)
