"""The user's search-space file (``--space space.yaml``): which layers may be touched and
how, as plain data validated up front.

```yaml
version: 1
temperature: [1, 20]       # a range (sampled on a log scale) or one value
alpha: 0.7                 # a range or one value
layers:                    # rules, the first whose key matches a layer wins
  features.0: {skip: true}                   # an exact module name: left untouched
  "re:features\\..*": {bits: [4, 8], sparsity: [0, 0.9]}   # a regex (fullmatch)
  _default: {rank_ratio: 1}                  # layers no rule matched
```

Per knob: one value fixes it (``keep_ratio: 1`` turns channel pruning off, ``rank_ratio: 1``
factorization), a list of two numbers is a range for a ratio knob (``sparsity``,
``keep_ratio``, ``rank_ratio``), a list is the allowed values of a knob with choices
(``bits: [4, 8]``, ``two_four: [false, true]``). A knob a rule does not name keeps its
default range. Every value is checked by its knob (:mod:`slimtune.knobs`).

:meth:`SpaceRules.from_dict` checks the file's shape and values; :meth:`SpaceRules.resolve`
checks it against a model's layers (an exact name that is not a layer, a regex that
matches none). Each problem is one :class:`ConfigError` naming the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError
from slimtune.knobs import KNOBS
from slimtune.knobs.base import Choices, FloatRange

__all__ = ["Fixed", "LayerRule", "SpaceRules", "load_space", "DEFAULT_KEY", "MAX_SPACE_BYTES"]

#: the rule for layers that no other rule matched
DEFAULT_KEY = "_default"
#: a space file is a few kB; a larger one is refused before it is parsed
MAX_SPACE_BYTES = 1 << 20
_TOP_KEYS = ("version", "temperature", "alpha", "layers")


@dataclass(frozen=True)
class Fixed:
    """A knob's range in the space: exactly ``value`` (not searched: no study parameter)."""

    value: Any

    def clip(self, value: Any) -> Any:
        return self.value


Range = FloatRange | Choices | Fixed


@dataclass(frozen=True)
class LayerRule:
    key: str  # an exact module name, ``re:<regex>`` or ``_default``
    skip: bool = False
    knobs: Mapping[str, Range] = field(default_factory=dict)

    def matches(self, layer: str) -> bool:
        if self.key == DEFAULT_KEY:
            return True
        if self.key.startswith("re:"):
            return re.fullmatch(self.key[3:], layer) is not None
        return self.key == layer

    def to_dict(self) -> dict[str, Any]:
        if self.skip:
            return {"skip": True}
        return {name: _range_to_data(r) for name, r in self.knobs.items()}


def _range_to_data(r: Range) -> Any:
    if isinstance(r, Fixed):
        return r.value
    if isinstance(r, FloatRange):
        return [r.low, r.high]
    return list(r.values)


def _where(key: str) -> str:
    return f"rule `{key}` of the space file"


def _knob_range(key: str, name: str, spec: Any) -> Range:
    """The range ``spec`` of knob ``name`` in rule ``key``, every value checked by it."""
    if name not in KNOBS:
        known = ", ".join(["skip", *KNOBS])
        raise ConfigError(f"{_where(key)}: unknown key `{name}`; known: {known}")
    k = KNOBS[name]

    def check(v: Any) -> Any:
        if isinstance(v, list | dict | tuple) or v is None:
            raise ConfigError(f"{_where(key)}: `{name}` must be one value, a range [low, "
                              f"high] or a list of values, but got {spec!r:.80}")
        try:
            v = k.check(v)
        except ConfigError as exc:
            raise ConfigError(f"{_where(key)}: {exc}") from None
        if isinstance(k.space, Choices) and v not in k.space.values:
            allowed = ", ".join(json.dumps(c) for c in k.space.values)
            raise ConfigError(f"{_where(key)}: `{name}` must be among {allowed}, but got "
                              f"{json.dumps(v)}")
        return v

    if not isinstance(spec, list):
        return Fixed(check(spec))
    if isinstance(k.space, FloatRange):
        if len(spec) != 2:
            raise ConfigError(f"{_where(key)}: `{name}` must be one value or a range [low, "
                              f"high], but got {spec!r:.80}")
        low, high = check(spec[0]), check(spec[1])
        if not low <= high:
            raise ConfigError(f"{_where(key)}: `{name}` must be [low, high] with low <= high, "
                              f"but got {spec!r:.80}")
        return Fixed(low) if low == high else FloatRange(float(low), float(high), k.space.log)
    values = [check(v) for v in spec]
    if not values:
        raise ConfigError(f"{_where(key)}: `{name}` must list at least one value")
    values = list(dict.fromkeys(values))
    return Fixed(values[0]) if len(values) == 1 else Choices(tuple(values))


def _global(name: str, spec: Any, low: float, high: float, log: bool
            ) -> tuple[float, float] | None:
    """``temperature`` / ``alpha``: one value or a range within [low, high]."""
    if spec is None:
        return None
    values = spec if isinstance(spec, list) else [spec, spec]
    ok = len(values) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if ok:
        lo, hi = float(values[0]), float(values[1])
        ok = (lo > low if log else lo >= low) and hi <= high and lo <= hi
    if not ok:
        bound = f"{low} < value <= {high}" if log else f"{low} <= value <= {high}"
        raise ConfigError(f"`{name}` of the space file must be one value or a range [low, "
                          f"high] with {bound}, but got {spec!r:.80}")
    return (lo, hi)


@dataclass(frozen=True)
class SpaceRules:
    """A parsed space file: the layer rules in order, and the distillation ranges."""

    rules: tuple[LayerRule, ...] = ()
    temperature: tuple[float, float] | None = None  # None: the default (1, 20)
    alpha: tuple[float, float] | None = None  # None: the default (0, 1)

    @classmethod
    def from_dict(cls, doc: Any) -> SpaceRules:
        if not isinstance(doc, dict):
            raise ConfigError(f"the space file must be a mapping with keys "
                              f"{', '.join(_TOP_KEYS)}, but got {type(doc).__name__}")
        unknown = [k for k in doc if k not in _TOP_KEYS]
        if unknown:
            raise ConfigError(f"the space file has an unknown key `{unknown[0]}`; known: "
                              f"{', '.join(_TOP_KEYS)}")
        if doc.get("version", 1) != 1:
            raise ConfigError(f"the space file's `version` must be 1, but got "
                              f"{doc.get('version')!r:.40}")
        layers = doc.get("layers") or {}
        if not isinstance(layers, dict):
            raise ConfigError("`layers` of the space file must map layer names, `re:` "
                              f"regexes or `{DEFAULT_KEY}` to rules, but got "
                              f"{type(layers).__name__}")
        rules = [cls._rule(str(key), spec) for key, spec in layers.items()]
        rules.sort(key=lambda r: r.key == DEFAULT_KEY)  # the default applies last
        return cls(tuple(rules), _global("temperature", doc.get("temperature"), 0.0, 100.0,
                                          log=True),
                   _global("alpha", doc.get("alpha"), 0.0, 1.0, log=False))

    @staticmethod
    def _rule(key: str, spec: Any) -> LayerRule:
        if key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as exc:
                raise ConfigError(f"{_where(key)}: not a valid regex ({exc})") from None
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{_where(key)} must be a mapping of knobs to values (or "
                              f"`skip: true`), but got {spec!r:.80}")
        if "skip" in spec:
            if spec["skip"] is not True or len(spec) > 1:
                raise ConfigError(f"{_where(key)}: `skip` must be `true` and alone in its "
                                  f"rule, but got {spec!r:.80}")
            return LayerRule(key, skip=True)
        return LayerRule(key, knobs={str(n): _knob_range(key, str(n), v)
                                     for n, v in spec.items()})

    def to_dict(self) -> dict[str, Any]:
        """The plain data :meth:`from_dict` reads back to an equal object (stored in the
        study, so resume rebuilds the same space)."""
        out: dict[str, Any] = {"version": 1}
        if self.temperature is not None:
            out["temperature"] = list(self.temperature)
        if self.alpha is not None:
            out["alpha"] = list(self.alpha)
        out["layers"] = {r.key: r.to_dict() for r in self.rules}
        return out

    def resolve(self, layers: list[str]) -> dict[str, LayerRule | None]:
        """Each layer's rule (the first that matches; None: no rule); ConfigError for an
        exact name that is not one of ``layers`` or a regex that matches none of them."""
        known = set(layers)
        for r in self.rules:
            if r.key == DEFAULT_KEY:
                continue
            if r.key.startswith("re:"):
                if not any(r.matches(n) for n in layers):
                    raise ConfigError(f"{_where(r.key)} matches no layer of the model; its "
                                      f"layers: {_listing(layers)}")
            elif r.key not in known:
                raise ConfigError(f"{_where(r.key)} names no layer of the model; its "
                                  f"layers: {_listing(layers)}")
        return {n: next((r for r in self.rules if r.matches(n)), None) for n in layers}


def _listing(layers: list[str]) -> str:
    shown = ", ".join(layers[:12])
    return shown + (f" and {len(layers) - 12} more" if len(layers) > 12 else "")


def load_space(path: str | Path) -> SpaceRules:
    """Read and check a space file (YAML, or JSON, which YAML reads too)."""
    import yaml

    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_SPACE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read --space {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPACE_BYTES:
        raise ConfigError(f"--space {p} is larger than {MAX_SPACE_BYTES} bytes: not a space "
                          "file")
    try:
        doc = (json.loads(raw) if p.suffix == ".json"
               else yaml.safe_load(raw.decode("utf-8")))
    except (ValueError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--space {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}"
                          f": {first}") from None
    try:
        return SpaceRules.from_dict(doc)
    except ConfigError as exc:
        raise ConfigError(f"--space {p}: {exc}") from None
