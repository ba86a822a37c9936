"""Plain-data compression plans: what to do to each layer, and how to distil."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from slimtune.errors import ConfigError
from slimtune.knobs import KNOBS, knob
from slimtune.knobs.bits import ALLOWED_BITS

__all__ = ["ALLOWED_BITS", "PLAN_VERSION", "LayerPlan", "CompressionPlan"]

PLAN_VERSION = 1
#: key order of a layer in plan version 1 (and its positional arguments): plans, artifact
#: headers and hence sizes stay byte for byte what they were
_V1_ORDER = ("sparsity", "rank_ratio", "bits", "keep_ratio")


class LayerPlan(Mapping[str, Any]):
    """Compression of one Conv2d or Linear layer: knob name -> value, for every knob of
    :data:`slimtune.knobs.KNOBS` (a knob not given is at its default, which leaves the
    layer alone). Values are validated by their knob; ``lp.sparsity`` reads one.

    The knobs of today: ``sparsity`` (fraction of weights zeroed by magnitude),
    ``keep_ratio`` (kept fraction of output channels), ``rank_ratio`` (kept fraction of
    the full rank), ``bits`` (weight bit-width, 32 = float32) and ``two_four`` (2:4
    semi-structured sparsity). Positional arguments follow plan version 1's order:
    ``LayerPlan(sparsity, rank_ratio, bits, keep_ratio)``.
    """

    __slots__ = ("_values",)

    def __init__(self, *args: Any, **values: Any) -> None:
        if len(args) > len(_V1_ORDER):
            raise TypeError(f"LayerPlan takes at most {len(_V1_ORDER)} positional values")
        for name, value in zip(_V1_ORDER, args, strict=False):
            if name in values:
                raise TypeError(f"LayerPlan got two values for `{name}`")
            values[name] = value
        unknown = [n for n in values if n not in KNOBS]
        if unknown:
            knob(unknown[0])  # raises, naming the known knobs
        checked = {n: (k.check(values[n]) if n in values else k.default)
                   for n, k in KNOBS.items()}
        object.__setattr__(self, "_values", checked)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a LayerPlan is immutable")

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        """The knob values (``LayerPlan(**lp.__dict__) == lp``)."""
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerPlan) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = ", ".join(f"{n}={v!r}" for n, v in self._values.items()
                            if KNOBS[n].active(v))
        return f"LayerPlan({changed})"

    def active(self) -> dict[str, Any]:
        """The knobs that change the layer, with their values."""
        return {n: v for n, v in self._values.items() if KNOBS[n].active(v)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data: plan version 1's knobs always, later knobs where they are set."""
        out = {n: self._values[n] for n in _V1_ORDER}
        out.update({n: v for n, v in self._values.items()
                    if n not in out and (KNOBS[n].always_stored or KNOBS[n].active(v))})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPlan:
        """The inverse of :meth:`to_dict`; plan version 1's ``sparsity``, ``rank_ratio``
        and ``bits`` are required (KeyError otherwise), every other knob defaults."""
        missing = [n for n in ("sparsity", "rank_ratio", "bits") if n not in data]
        if missing:
            raise KeyError(missing[0])  # a version 1 plan names these
        return cls(**{str(n): v for n, v in data.items()})


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
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionPlan:
        try:
            version = int(data.get("version", PLAN_VERSION))
            if version != PLAN_VERSION:
                raise ConfigError(
                    f"plan version {version} is not supported (this slimtune reads {PLAN_VERSION})"
                )
            layers = {str(name): LayerPlan.from_dict(lp)
                      for name, lp in data["layers"].items()}
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
