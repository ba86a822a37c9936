"""What a compression knob is: one object that knows everything about one per-layer choice.

A knob has a name (the key in a layer's plan and the suffix of its Optuna parameter
``"<layer>.<name>"``), a default that leaves the layer alone, a validation, a range in the
search space, a transform of the model, its part of the artifact, optional levels for the
warm start and the sensitivity pass, and a summary. Every place that used to list the
knobs (the plan, the space, ``apply``, the exporter and loader, ``plain_copy``, the guided
ladders, the report) loops over :data:`slimtune.knobs.KNOBS` instead.

Three roles, each with its own small hooks:

- ``structure`` (channels kept, rank kept): changes shapes. :meth:`Knob.apply` runs on the
  teacher's copy; :meth:`StructureKnob.skeleton` builds the same shapes without weights
  (the loader, from the plan alone). The artifact stores the resulting dense tensors.
- ``mask`` (unstructured sparsity, 2:4): zeroes weights through a mask parametrization
  (:class:`slimtune.ops.prune.MagnitudeMask`, tagged with the knob's name). Each mask
  knob, in stage order, narrows the kept positions left by the ones before it; how many it
  keeps is exact from the plan and the shape (:meth:`MaskKnob.kept`), so the loader knows
  every length before reading. It stores its own index of what it kept, as a stream
  (:mod:`slimtune.codec.streams`: its kind, its symbols, and the mask they mean).
- ``values`` (bit-width): how the kept values are coded. It writes a prelude (scales)
  before the mask knobs' indexes and the values, a stream too, after them.

A stream is written fixed-width or entropy-coded by the artifact, not by the knob.

Knob modules import the torch-level primitives (``slimtune.ops``) only inside their
transforms, so reading or validating a plan loads none of it: a plan stays data.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from slimtune.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import optuna
    import torch
    from torch import nn

    from slimtune.codec import Reader
    from slimtune.codec.streams import Kind

__all__ = ["Knob", "StructureKnob", "MaskKnob", "ValuesKnob", "FloatRange", "Choices"]


@dataclass(frozen=True)
class FloatRange:
    """A knob's range in the space: a float in ``[low, high]`` (on a log scale if ``log``)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ConfigError(f"`low <= high` must hold, but got low={self.low}, "
                              f"high={self.high}")

    def suggest(self, trial: optuna.trial.BaseTrial, param: str) -> float:
        return trial.suggest_float(param, self.low, self.high, log=self.log)

    def clip(self, value: Any) -> Any:
        return min(max(value, self.low), self.high)


@dataclass(frozen=True)
class Choices:
    """A knob's range in the space: one of ``values``."""

    values: tuple[Any, ...]

    def suggest(self, trial: optuna.trial.BaseTrial, param: str) -> Any:
        return trial.suggest_categorical(param, list(self.values))

    def clip(self, value: Any) -> Any:
        """``value`` if allowed, else the nearest allowed number (ties: the larger, which
        compresses less), else the first value."""
        if value in self.values:
            return value
        numbers = [v for v in self.values if isinstance(v, int | float)
                   and not isinstance(v, bool)]
        if numbers and isinstance(value, int | float) and not isinstance(value, bool):
            return min(numbers, key=lambda v: (abs(v - value), -v))
        return self.values[0]


class Knob(ABC):
    """The contract every knob implements (subclass one of the three roles below; a knob
    missing one of its role's abstract methods cannot be instantiated)."""

    #: key in a layer's plan and in the study's parameter names
    name: ClassVar[str]
    #: the value that leaves a layer as it is
    default: ClassVar[Any]
    #: ``structure``, ``mask`` or ``values`` (see the module docstring)
    role: ClassVar[str]
    #: the order in which :func:`slimtune.compress.apply_` runs the transforms
    stage: ClassVar[int]
    #: the range the search samples from
    space: ClassVar[FloatRange | Choices]
    #: in every search space unless the user asks for it (``--knob NAME``)
    opt_in: ClassVar[bool] = False
    #: written in every plan, even at the default (the knobs of plan version 1: their
    #: plans, headers and hence artifact sizes stay byte for byte what they were)
    always_stored: ClassVar[bool] = False
    #: levels the guided plans move through, light to heavy (empty: not guided)
    ladder: ClassVar[tuple[Any, ...]] = ()
    #: levels the sensitivity pass measures (a subset of ``ladder``)
    probes: ClassVar[tuple[Any, ...]] = ()

    # -- the plan ------------------------------------------------------------------------
    @abstractmethod
    def check(self, value: Any) -> Any:
        """``value`` validated and normalized (ConfigError naming the knob otherwise)."""

    def active(self, value: Any) -> bool:
        """Whether ``value`` changes a layer."""
        return value != self.default

    # -- the space -----------------------------------------------------------------------
    def in_space(self, space: Any, layer: str) -> bool:
        """Whether ``space`` (a :class:`slimtune.spaces.SearchSpace`) searches this knob
        on ``layer``."""
        return not self.opt_in or self.name in space.knobs

    # -- the model -----------------------------------------------------------------------
    @abstractmethod
    def apply(self, model: nn.Module, values: Mapping[str, Any],
              input_shape: tuple[int, ...] | None) -> nn.Module:
        """Compress the named layers of ``model`` in place (``values``: layer -> value,
        active values only); returns the model (a transform may replace modules)."""

    # -- the report ----------------------------------------------------------------------
    #: the knob's name in the report's heatmap and tables, e.g. ``channels kept``
    label: ClassVar[str] = ""

    @abstractmethod
    def summary(self, value: Any) -> str:
        """A few characters for the per-layer summary, e.g. ``s=0.70``."""

    def strength(self, value: Any) -> float:
        """How hard ``value`` compresses a layer, in [0, 1]: 0 leaves it alone, 1 is the
        heaviest setting (the report's heatmap colour; spared layers stay pale)."""
        return 0.0 if not self.active(value) else 1.0


class StructureKnob(Knob):
    role = "structure"

    def skeleton(self, model: nn.Module, values: Mapping[str, Any],
                 input_shape: tuple[int, ...]) -> nn.Module:
        """The shapes :meth:`apply` makes, without computing weights (for the loader)."""
        return self.apply(model, values, input_shape)


class MaskKnob(Knob):
    role = "mask"

    @abstractmethod
    def kept(self, shape: tuple[int, ...], value: Any, before: int) -> int:
        """Positions of a weight of ``shape`` still kept after this knob, when ``before``
        were kept before it (exact: from the plan and the shape, never the weights)."""

    @abstractmethod
    def index_kind(self, shape: tuple[int, ...], value: Any, before: int, kept: int) -> Kind:
        """The stream (:mod:`slimtune.codec.streams`) that says which of the ``before``
        positions still kept are kept after this knob (``kept`` of them)."""

    @abstractmethod
    def index_symbols(self, before: np.ndarray, mask: np.ndarray, value: Any,
                      shape: tuple[int, ...]) -> np.ndarray:
        """The symbols of that stream: ``mask`` (flat bool, all positions) within
        ``before`` (flat bool, the positions kept before it)."""

    @abstractmethod
    def mask_of(self, symbols: np.ndarray, before: np.ndarray, value: Any,
                shape: tuple[int, ...], key: str) -> np.ndarray:
        """The flat bool mask of kept positions (a subset of ``before``) the symbols
        say; ArtifactError naming ``key`` if they are out of range."""


class ValuesKnob(Knob):
    role = "values"

    @abstractmethod
    def encode_prelude(self, weight: torch.Tensor, value: Any) -> bytes:
        """What the loader needs before the indexes (e.g. per-channel scales)."""

    @abstractmethod
    def decode(self, reader: Reader, shape: tuple[int, ...], value: Any, key: str
               ) -> Any:
        """Read the prelude: a state for :meth:`values_of`."""

    @abstractmethod
    def values_kind(self, value: Any, kept: int) -> Kind:
        """The stream the ``kept`` values are stored as (e.g. codes of ``bits`` bits)."""

    @abstractmethod
    def values_symbols(self, weight: torch.Tensor, keep: np.ndarray, value: Any
                       ) -> np.ndarray:
        """The symbols of that stream for the kept values (``keep``: flat bool)."""

    @abstractmethod
    def values_of(self, symbols: np.ndarray, state: Any, keep: np.ndarray,
                  shape: tuple[int, ...], value: Any, key: str) -> torch.Tensor:
        """The dense weight of ``shape`` (zeros where not kept)."""


def check_ratio(name: str, value: Any, *, low_open: bool, high_open: bool) -> float:
    """``value`` if it lies in the interval ``(0|[0, 1)|1]`` (a number as given, so a plan
    reads back exactly as written; other types as a float), else one ConfigError."""
    lo, hi = ("<" if low_open else "<="), ("<" if high_open else "<=")
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (0.0 < v if low_open else 0.0 <= v) and (v < 1.0 if high_open else v <= 1.0)
    if not ok or isinstance(value, bool):
        raise ConfigError(f"`0 {lo} {name} {hi} 1` must hold, but got {name}={value}")
    return value if isinstance(value, (int, float)) else v
