"""FLOPs: multiply-accumulates (MACs) of one forward pass at batch 1.

- ``dense``: thop's count; every weight is multiplied, zeros included.
- ``effective``: the same, except that in Conv2d / Linear layers only the *stored*
  weights count (pruned positions are skipped, as a sparse kernel would). This is the
  search objective. It depends on the plan and the shapes only: a stored weight that
  happens to quantize to zero is still counted.
- ``bitops``: for Conv2d / Linear layers, effective MACs x weight bits x activation bits
  (activations stay float32, so 32), summed.

thop cannot see unstructured zeros or bit-widths, so the per-layer numbers come from our
own forward hooks; structured-pruned and factorized layers are ordinary smaller
Conv2d / Linear modules, which thop and the hooks count at their real shapes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["FlopsReport", "count_flops", "flops"]

ACTIVATION_BITS = 32


@dataclass(frozen=True)
class FlopsReport:
    dense: int
    effective: int
    bitops: int
    #: Conv2d / Linear module name -> (dense MACs, effective MACs)
    layers: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, int]:
        return {"dense": self.dense, "effective": self.effective, "bitops": self.bitops}


def _thop_macs(plain: nn.Module, x: torch.Tensor) -> int:
    import thop

    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        macs, _ = thop.profile(plain, inputs=(x,), verbose=False)
    return int(macs)


def count_flops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    layers: Mapping[str, tuple[int, int]] | None = None,
) -> FlopsReport:
    """Dense, effective and bit-operation counts at batch 1.

    ``layers`` maps a Conv2d/Linear module name to ``(stored weights, bits)``; layers not
    in it count their non-zero weights at 32 bits.
    """
    from slimtune.compress.plain import plain_copy

    plain = plain_copy(model)[0].eval()
    x = torch.zeros(1, *input_shape)
    per_layer: dict[str, tuple[int, int, int]] = {}  # name -> (dense, effective, bits)
    hooks = []
    for name, m in plain.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue

        def hook(mod: nn.Module, inp: object, out: torch.Tensor, name: str = name) -> None:
            n_out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            positions = out.numel() // n_out  # output pixels (or rows) per output channel
            stored, bits = (layers or {}).get(name, (int((mod.weight != 0).sum()), 32))
            per_layer[name] = (out.numel() * mod.weight[0].numel(), positions * stored, bits)

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            plain(x)
    finally:
        for h in hooks:
            h.remove()
    dense = _thop_macs(plain, x)
    layer_dense = sum(d for d, _, _ in per_layer.values())
    effective = dense - layer_dense + sum(e for _, e, _ in per_layer.values())
    bitops = sum(e * b * ACTIVATION_BITS for _, e, b in per_layer.values())
    return FlopsReport(dense=dense, effective=effective, bitops=bitops,
                       layers={n: (d, e) for n, (d, e, _) in per_layer.items()})


def flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Dense MACs at batch 1, counted by thop (zeros in the weights are counted)."""
    from slimtune.compress.plain import plain_copy

    return _thop_macs(plain_copy(model)[0].eval(), torch.zeros(1, *input_shape))
