"""Structured (channel) pruning with torch-pruning.

For each layer with ``keep_ratio < 1`` the output channels with the smallest L1 norm are
removed together with everything that depends on them, as torch-pruning's dependency
graph finds it: the BatchNorm after the layer, the input channels of the next conv or
Linear (through Flatten), and every layer tied to it by a residual addition. The result
is a smaller dense model.

How many channels a layer keeps depends only on shapes (``max(1, round(keep * n))`` of
its original count ``n``), never on the weights, so the loader of an exported file
rebuilds the same shapes from the plan alone.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from slimtune.errors import ConfigError, SlimtuneError

__all__ = ["ChannelPruneConfig", "channel_prune", "kept_channels", "output_layers"]


@dataclass(frozen=True)
class ChannelPruneConfig:
    """Kept fraction of output channels, per layer name."""

    keep_ratio: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, k in self.keep_ratio.items():
            if not (0.0 < k <= 1.0):
                raise ConfigError(
                    f"`0 < keep_ratio <= 1` must hold, but got keep_ratio={k} for `{name}`"
                )


def kept_channels(n: int, keep_ratio: float) -> int:
    return max(1, min(n, int(round(keep_ratio * n))))


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Conv2d/Linear layers whose output channels are the model's outputs (never pruned):
    the last one to run in a forward pass at batch 1."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=name: order.append(n))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order[-1:]


def channel_prune(
    model: nn.Module,
    config: ChannelPruneConfig,
    input_shape: tuple[int, ...],
    *,
    inplace: bool = False,
) -> nn.Module:
    """Remove output channels layer by layer (in module order) with their dependents."""
    import torch_pruning as tp

    if not inplace:
        model = copy.deepcopy(model)
    todo = {n: k for n, k in config.keep_ratio.items() if k < 1.0}
    if not todo:
        return model
    modules = dict(model.named_modules())
    protected = set(output_layers(model, input_shape))
    targets = {}
    for name in todo:
        layer = modules.get(name)
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise ConfigError(f"layer `{name}` is not a Conv2d/Linear of the model")
        if name in protected:
            raise ConfigError(f"layer `{name}` produces the model's outputs; it cannot lose "
                              "channels (leave its keep_ratio at 1)")
        targets[name] = (layer, kept_channels(_out_channels(layer), todo[name]))
    example = torch.zeros(1, *input_shape)
    was_training = model.training
    model.eval()  # BatchNorm cannot trace a batch of one in training mode
    try:
        for name in (n for n in modules if n in targets):
            layer, keep = targets[name]
            n_prune = _out_channels(layer) - keep
            if n_prune <= 0:  # already shrunk through a coupled layer
                continue
            with (contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(),
                  torch.enable_grad()):  # torch-pruning traces the graph through autograd
                warnings.simplefilter("ignore")
                graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example, verbose=False
                )
            fn = (tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d)
                  else tp.prune_linear_out_channels)
            importance = layer.weight.detach().abs().reshape(_out_channels(layer), -1).sum(1)
            idxs = torch.argsort(importance, stable=True)[:n_prune].tolist()
            group = graph.get_pruning_group(layer, fn, idxs)
            if not graph.check_pruning_group(group):
                raise SlimtuneError(f"torch-pruning refuses to prune layer `{name}`")
            group.prune()
    finally:
        model.train(was_training)
    return model
