"""Built-in models, each built from the dataset's input shape and class count."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimtune.errors import UnknownNameError

__all__ = ["SmallCNN", "MODELS", "build_model"]


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


def _small_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=input_shape[0])


MODELS: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {"small_cnn": _small_cnn}


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialized model of the built-in ``name``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model `{name}`; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
    return factory(num_classes, tuple(input_shape))
