"""Plain-data compression plans: what to do to each layer, and how to distil."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from slimtune.errors import ConfigError

__all__ = ["ALLOWED_BITS", "PLAN_VERSION", "LayerPlan", "CompressionPlan"]

#: weight bit-widths the search chooses from; 32 means "keep float32"
ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 6, 8, 32)
PLAN_VERSION = 1


@dataclass(frozen=True)
class LayerPlan:
    """Compression of one Conv2d or Linear layer.

    ``sparsity`` is the fraction of weights set to zero by magnitude pruning;
    ``rank_ratio`` is the kept fraction of the layer's full rank (1.0 = no factorization);
    ``bits`` is the weight bit-width (32 = float32, no quantization);
    ``keep_ratio`` is the kept fraction of the layer's output channels (structured
    pruning: the layer, its BatchNorm and its consumers really shrink; 1.0 = keep all).
    """

    sparsity: float = 0.0
    rank_ratio: float = 1.0
    bits: int = 32
    keep_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.sparsity < 1.0) or math.isnan(self.sparsity):
            raise ConfigError(f"`0 <= sparsity < 1` must hold, but got sparsity={self.sparsity}")
        if not (0.0 < self.rank_ratio <= 1.0):
            raise ConfigError(
                f"`0 < rank_ratio <= 1` must hold, but got rank_ratio={self.rank_ratio}"
            )
        if not (2 <= int(self.bits) <= 32) or int(self.bits) != self.bits:
            raise ConfigError(f"`bits` must be an integer in 2..32, but got bits={self.bits}")
        if not (0.0 < self.keep_ratio <= 1.0):
            raise ConfigError(
                f"`0 < keep_ratio <= 1` must hold, but got keep_ratio={self.keep_ratio}"
            )

    def rank(self, full_rank: int) -> int:
        """The kept rank for a layer whose weight matrix has rank ``full_rank``."""
        return max(1, min(full_rank, math.ceil(self.rank_ratio * full_rank - 1e-9)))


@dataclass(frozen=True)
class CompressionPlan:
    """Per-layer plans (keyed by the layer's module name) plus the distillation setting.

    The loss of the fine-tune is
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    Layers not named in ``layers`` are left as they are.
    """

    layers: dict[str, LayerPlan] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not (self.temperature > 0) or math.isinf(self.temperature):
            raise ConfigError(
                f"`temperature > 0` must hold, but got temperature={self.temperature}"
            )
        if not (0.0 <= self.alpha <= 1.0):
            raise ConfigError(f"`0 <= alpha <= 1` must hold, but got alpha={self.alpha}")
        for name, lp in self.layers.items():
            if not isinstance(lp, LayerPlan):
                raise ConfigError(f"layer `{name}` must map to a LayerPlan, got {type(lp)}")

    def layer(self, name: str) -> LayerPlan:
        return self.layers.get(name, LayerPlan())

    # -- plain data / JSON round trip ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "layers": {name: asdict(lp) for name, lp in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionPlan:
        try:
            version = int(data.get("version", PLAN_VERSION))
            if version != PLAN_VERSION:
                raise ConfigError(
                    f"plan version {version} is not supported (this slimtune reads {PLAN_VERSION})"
                )
            layers = {
                str(name): LayerPlan(
                    sparsity=float(lp["sparsity"]),
                    rank_ratio=float(lp["rank_ratio"]),
                    bits=int(lp["bits"]),
                    keep_ratio=float(lp.get("keep_ratio", 1.0)),
                )
                for name, lp in data["layers"].items()
            }
            return cls(
                layers=layers,
                temperature=float(data["temperature"]),
                alpha=float(data["alpha"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed compression plan: missing or bad field {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed compression plan JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def uniform(
        cls,
        layer_names: list[str],
        sparsity: float = 0.0,
        rank_ratio: float = 1.0,
        bits: int = 32,
        temperature: float = 4.0,
        alpha: float = 0.5,
        keep_ratio: float = 1.0,
        keep_all: tuple[str, ...] = (),
    ) -> CompressionPlan:
        """Every layer compressed alike (the baseline the search must beat).

        Layers in ``keep_all`` (the output layer) keep all their channels.
        """
        lp = LayerPlan(sparsity=sparsity, rank_ratio=rank_ratio, bits=bits, keep_ratio=keep_ratio)
        out = LayerPlan(sparsity=sparsity, rank_ratio=rank_ratio, bits=bits)
        return cls({n: (out if n in keep_all else lp) for n in layer_names},
                   temperature=temperature, alpha=alpha)
