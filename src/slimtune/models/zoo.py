"""Built-in models, each built from the dataset's input shape and class count."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimtune.errors import UnknownNameError

__all__ = ["SmallCNN", "CifarResNet", "MODELS", "build_model"]


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


def _small_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=input_shape[0])


def _resnet(depth: int) -> Callable[[int, tuple[int, ...]], nn.Module]:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=input_shape[0])

    return factory


MODELS: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
}


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialized model of the built-in ``name``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model `{name}`; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
    return factory(num_classes, tuple(input_shape))
