"""The registry of compression knobs: name -> the one object that knows that knob.

A new knob is one module defining a :class:`~slimtune.knobs.base.Knob` subclass and its
``KNOB`` instance, plus one line below. Registration order is the order in which a layer's
knobs are sampled, listed and summarized; ``stage`` orders the transforms.
"""

from __future__ import annotations

from collections.abc import Iterable

from slimtune.errors import ConfigError
from slimtune.knobs import bits, channels, rank, sparsity, two_four
from slimtune.knobs.base import Knob, MaskKnob, StructureKnob, ValuesKnob

__all__ = ["KNOBS", "register", "knob", "by_stage", "structure_knobs", "mask_knobs",
           "values_knob", "Knob", "MaskKnob", "StructureKnob", "ValuesKnob"]

KNOBS: dict[str, Knob] = {}


def register(k: Knob) -> Knob:
    """Add ``k`` to the registry (its name must be new and must not contain a dot)."""
    if k.name in KNOBS or "." in k.name or not k.name:
        raise ValueError(f"knob name {k.name!r} is taken or invalid")
    KNOBS[k.name] = k
    return k


for _module in (sparsity, channels, rank, bits, two_four):  # one line per knob
    register(_module.KNOB)


def knob(name: str) -> Knob:
    """The knob called ``name``; ConfigError listing the known ones otherwise."""
    try:
        return KNOBS[name]
    except KeyError:
        raise ConfigError(f"unknown knob `{name}`; known: {', '.join(KNOBS)}") from None


def by_stage(role: str | None = None) -> list[Knob]:
    """The knobs (of one ``role``) in the order their transforms run."""
    return sorted((k for k in KNOBS.values() if role is None or k.role == role),
                  key=lambda k: k.stage)


def structure_knobs() -> Iterable[StructureKnob]:
    return [k for k in by_stage("structure") if isinstance(k, StructureKnob)]


def mask_knobs() -> list[MaskKnob]:
    return [k for k in by_stage("mask") if isinstance(k, MaskKnob)]


def values_knob() -> ValuesKnob:
    """The one knob that codes the kept values (the bit-width)."""
    found = [k for k in by_stage("values") if isinstance(k, ValuesKnob)]
    if len(found) != 1:
        raise RuntimeError(f"the registry needs exactly one values knob, it has {len(found)}")
    return found[0]
