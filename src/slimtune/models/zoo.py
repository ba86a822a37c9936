"""Built-in models, each built from the dataset's input shape and class count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtune import inmemory
from slimtune.errors import UnknownNameError
from slimtune.trust import NO_TRUST, Trust, resolve

__all__ = ["SmallCNN", "VGGSmall", "CifarResNet", "MODELS", "build_model"]


class SmallCNN(nn.Module):
    """Three 3x3 convs with BatchNorm and a two-layer classifier (~40k weights for 8x8 input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, num_classes)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual addition (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B: a 1x1 projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. (2016): depth 6n + 2, widths w, 2w, 4w.

    Shortcuts that change shape are 1x1 convolutions (option B), which structured pruning
    can shrink with the rest of the block.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise UnknownNameError(f"a CIFAR ResNet has depth 6n + 2 >= 8, not {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layers(x)).flatten(1))


class VGGSmall(nn.Module):
    """A VGG-style net for 28 and 32 pixel inputs (the kind SlimNets compressed 85x):
    three stages of two 3x3 conv + BatchNorm + ReLU, each followed by 2x2 max-pooling,
    then a two-layer classifier. About 0.4M weights and 29M MACs at 28 x 28."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * c, 256), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))


def _small_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=input_shape[0])


def _resnet(depth: int) -> Callable[[int, tuple[int, ...]], nn.Module]:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=input_shape[0])

    return factory


def _vgg_small(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGGSmall(num_classes=num_classes, in_channels=input_shape[0])


MODELS: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    "small_cnn": _small_cnn,
    "vgg_small": _vgg_small,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
}


def _torchvision(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A torchvision classification model, untrained, with the data's classes and channels."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as exc:
        raise UnknownNameError(f"unknown model `torchvision:{name}`: {exc}") from None
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != input_shape[0]:  # e.g. grey images
        parent, attr = _parent_of(model, first)
        setattr(parent, attr, nn.Conv2d(
            input_shape[0], first.out_channels, first.kernel_size, stride=first.stride,
            padding=first.padding, dilation=first.dilation, groups=first.groups,
            bias=first.bias is not None,
        ))
    return model


def _parent_of(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for name, m in model.named_modules():
        if m is target:
            parent, _, attr = name.rpartition(".")
            return (model.get_submodule(parent) if parent else model), attr
    raise KeyError("module not in model")  # pragma: no cover


def _user(spec: str, num_classes: int, input_shape: tuple[int, ...], trust: Trust,
          source: str | None) -> nn.Module:
    """``module:factory``: called with ``num_classes`` and ``input_shape`` where it takes
    them (by name), else with no arguments. Imported only through the trust boundary."""
    import inspect

    factory: Any = resolve(spec, "model", trust, source)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("input_shape", input_shape))
              if k in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownNameError(f"model factory `{spec}` returned a {type(model).__name__}, "
                               "not a torch.nn.Module")
    return model


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], *,
                trust: Trust = NO_TRUST, source: str | None = None) -> nn.Module:
    """A freshly initialized model: a built-in name, ``torchvision:NAME`` or
    ``module:factory`` (the name is stored in exported files, so the loader can rebuild it).

    ``source`` says where ``name`` was read from (an artifact, a study); a
    ``module:factory`` name from a source is built only if ``trust`` allows its module
    (see :mod:`slimtune.trust`). ``source=None``: the caller named it, which is trusted.
    """
    input_shape = tuple(input_shape)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], num_classes, input_shape)
    if inmemory.is_memory(name):  # a model given as a Python object, with its weights
        return inmemory.model(name)
    if ":" in name:
        return _user(name, num_classes, input_shape, trust, source)
    try:
        factory = MODELS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model `{name}`; choose one of: {', '.join(sorted(MODELS))}, "
            "torchvision:NAME or module:factory"
        ) from None
    return factory(num_classes, input_shape)
