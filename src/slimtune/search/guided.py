"""Sensitivity-guided plans: where to compress, learned from one pass over the teacher.

Uniform plans compress every layer alike, so a 288-weight first convolution loses as much
as a 147k-weight one, for almost no saving. The guided plans put compression where it is
cheap in accuracy and worth most in size and FLOPs:

1. **Sensitivity pass** (:func:`probe_layers`, run as Ray tasks before the trials). For each
   compressible layer alone, at two probe levels of each knob (sparsity, channel keep ratio,
   bits), compress only that layer, re-estimate its BatchNorm statistics and measure
   validation accuracy with no fine-tuning: the
   classic per-layer sensitivity scan (Han et al. 2015 set their pruning thresholds from
   one). The same pass records which layers shrink when a layer loses channels (its
   consumers, or a whole residual group).
2. **Cost model** (:meth:`Sensitivity.predict`): each layer's share of the teacher's size
   and effective MACs, scaled by its kept fraction of weights, bits and the channels kept by
   it and the layers feeding it. It only ranks moves; every trial measures its real cost.
3. **Greedy allocation** (:func:`greedy_path`): from every layer at the lightest level,
   repeatedly take the one-step move (one knob of one layer one level heavier) with the most
   predicted cost saved per unit of predicted accuracy lost. Accuracy losses are the one-shot
   drops, added over layers and knobs (interpolated between probe levels).
4. **Plans** (:func:`guided_plans`): along a path that weighs FLOPs and one that weighs size,
   the first plans predicted below cost targets spread over the heavy end of the range, where
   uniform compression loses most.

One-shot drops overstate what fine-tuning cannot recover, most of all for structured
pruning, so the guided plans are a starting population for the search, not its answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtune.data.split import Split, as_split
from slimtune.knobs import KNOBS
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from slimtune.spaces.space import SearchSpace

__all__ = ["LADDERS", "PROBES", "Sensitivity", "probe_layers", "layer_shares", "greedy_path",
           "guided_plans", "N_GUIDED"]

#: the levels the greedy moves through, light to heavy, per knob (each knob's ``ladder``;
#: knobs without one are not guided)
LADDERS: dict[str, tuple[float, ...]] = {n: k.ladder for n, k in KNOBS.items() if k.ladder}
#: the levels measured in the sensitivity pass (each knob's ``probes``; others are
#: interpolated; the lightest level of each ladder is taken to cost no accuracy)
PROBES: dict[str, tuple[float, ...]] = {n: k.probes for n, k in KNOBS.items() if k.ladder}
#: accuracy examples the sensitivity pass reads at most (from the validation split)
PROBE_EXAMPLES = 512
#: training batches (of 128) each probe's BatchNorm statistics are re-estimated on
PROBE_BATCHES = 4
#: guided plans enqueued after the uniform warm start
N_GUIDED = 6
#: accuracy loss counted for a move that loses none: a move must save cost to be chosen
_EPS = 0.005


def knobs_of(space: SearchSpace, layer: str) -> tuple[str, ...]:
    """The knobs the space gives ``layer``, of those the guided plans use (with a ladder).
    The cost model (:meth:`Sensitivity.predict`) knows what sparsity, channels and bits
    do to size and MACs; a new knob joins the guided plans with a ladder and a line
    there."""
    return tuple(n for n in space.knobs_of(layer) if n in LADDERS)


def _accuracy(model: nn.Module, val: Split) -> float:
    from slimtune.objectives.accuracy import accuracy

    return accuracy(model, val)


def _weights(model: nn.Module, names: list[str]) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {n: int(mods[n].weight.numel()) for n in names if hasattr(mods.get(n), "weight")}


def probe_layers(
    teacher: nn.Module, space: SearchSpace, input_shape: tuple[int, ...], layers: list[str],
    val: Split | torch.Tensor, y_val: torch.Tensor | None = None, *,
    train: Split | None = None,
) -> dict[str, Any]:
    """The one-shot sensitivity of ``layers``: for each, each knob and each probe level,
    the validation accuracy of the teacher with only that layer compressed; and for each
    channel probe, the fraction of every layer's weights left (to learn who shrinks with
    whom); and the teacher's own accuracy on the same examples. With ``train``, each
    compressed student's BatchNorm statistics are re-estimated on :data:`PROBE_BATCHES`
    of its batches first, as a trial's are. Runs in a Ray task; plain data out."""
    from slimtune.compress.apply import apply
    from slimtune.compress.recalibrate import recalibrate_batchnorm

    probe = as_split(val, y_val).head(PROBE_EXAMPLES)
    teacher = teacher.eval()
    all_layers = list(space.layers)
    before = _weights(teacher, all_layers)
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    shrink: dict[str, dict[str, float]] = {}
    for name in layers:
        accuracy[name] = {}
        for knob in knobs_of(space, name):
            accuracy[name][knob] = {}
            for level in PROBES[knob]:
                plan = CompressionPlan({name: LayerPlan(**{knob: level})})
                student = apply(teacher, plan, input_shape)
                if train is not None:
                    recalibrate_batchnorm(student, train, batches=PROBE_BATCHES,
                                          generator=torch.Generator().manual_seed(0))
                accuracy[name][knob][repr(level)] = _accuracy(student, probe)
                if knob == "keep_ratio" and level == PROBES["keep_ratio"][-1]:
                    after = _weights(student, all_layers)
                    kept = {n: after[n] / before[n] for n in before if n in after}
                    shrink[name] = {n: r for n, r in kept.items() if r < 0.999}
    return {"base": _accuracy(teacher, probe), "accuracy": accuracy, "shrink": shrink}


def layer_shares(
    teacher: nn.Module, space: SearchSpace, input_shape: tuple[int, ...], teacher_size: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Each layer's share of the teacher's size (float32 weights / artifact bytes) and of its
    effective MACs."""
    from slimtune.objectives.flops import count_flops

    report = count_flops(teacher, input_shape)
    numel = _weights(teacher, list(space.layers))
    size = {n: 4.0 * numel[n] / teacher_size for n in space.layers}
    macs = {n: report.layers.get(n, (0, 0))[1] / max(report.effective, 1) for n in space.layers}
    return size, macs


State = dict[str, dict[str, int]]  # layer -> knob -> index into LADDERS[knob]
#: (layer -> [(j, exponent)], (layer, knob, ladder index) -> predicted drop)
_Model = tuple[dict[str, list[tuple[str, float]]], dict[tuple[str, str, int], float]]


@dataclass
class Sensitivity:
    """What the guided plans are made from (stored in the study for the record)."""

    base_accuracy: float
    #: layer -> knob -> probe level (repr) -> one-shot validation accuracy
    accuracy: dict[str, dict[str, dict[str, float]]]
    #: layer -> share of the teacher's artifact bytes in its float32 weights
    size_share: dict[str, float]
    #: layer -> share of the teacher's effective MACs
    macs_share: dict[str, float]
    #: layer j -> {layer l: fraction of l's weights left when j keeps PROBES' last ratio}
    shrink: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"base_accuracy": self.base_accuracy, "accuracy": self.accuracy,
                "size_share": self.size_share, "macs_share": self.macs_share,
                "shrink": self.shrink}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(**d)

    # -- the model the greedy ranks moves with -------------------------------------------
    def drop(self, layer: str, knob: str, level: float) -> float:
        """Predicted accuracy lost by ``layer`` at ``level`` of ``knob`` alone: 0 at the
        lightest level, the measured drops at the probes, linear in the level between."""
        light = LADDERS[knob][0]
        points = [(light, 0.0)] + [
            (float(p), max(0.0, self.base_accuracy - self.accuracy[layer][knob][repr(p)]))
            for p in PROBES[knob]]
        points.sort(key=lambda pv: abs(pv[0] - light))
        dist = abs(level - light)
        for (a, da), (b, db) in zip(points, points[1:], strict=False):
            if abs(a - light) <= dist <= abs(b - light):
                t = (dist - abs(a - light)) / max(abs(b - light) - abs(a - light), 1e-12)
                return da + t * (db - da)
        return points[-1][1]  # beyond the heaviest probe: as heavy as it

    def _model(self) -> _Model:
        """(layer -> [(j, exponent)]: its weights scale by keep_j ** exponent; and the
        predicted drop of every (layer, knob, ladder index)), computed once."""
        cached = getattr(self, "_cache", None)
        if cached is None:
            base = math.log(PROBES["keep_ratio"][-1])
            deps: dict[str, list[tuple[str, float]]] = {n: [] for n in self.size_share}
            for j, left in self.shrink.items():
                for layer, frac in left.items():
                    if layer in deps:
                        deps[layer].append((j, math.log(max(frac, 1e-9)) / base))
            drops = {(n, knob, i): self.drop(n, knob, level)
                     for n, knobs in self.accuracy.items() for knob in knobs
                     for i, level in enumerate(LADDERS[knob])}
            cached = self._cache = (deps, drops)
        return cached

    def predict(self, state: State) -> tuple[float, float, float]:
        """(size / teacher size, MACs / teacher MACs, accuracy drop) of a plan, predicted."""
        deps, drops = self._model()
        keep = {n: LADDERS["keep_ratio"][k.get("keep_ratio", 0)] for n, k in state.items()}
        size = 1.0 - sum(self.size_share.values())  # what the layers' weights are not
        macs = 1.0 - sum(self.macs_share.values())
        drop = 0.0
        for n, k in state.items():
            s = LADDERS["sparsity"][k.get("sparsity", 0)]
            bits = LADDERS["bits"][k.get("bits", 0)]
            left = math.prod(keep[j] ** e for j, e in deps[n] if j in keep)
            index = 0.0 if s == 0 else min(1.0, (1 - s) * (math.log2(1 / (1 - s)) + 2))
            size += self.size_share[n] * left * ((1 - s) * bits + index) / 32
            macs += self.macs_share[n] * left * (1 - s)
            drop += sum(drops[(n, knob, i)] for knob, i in k.items())
        return size, macs, drop


def greedy_path(sens: Sensitivity, space: SearchSpace, weight: float) -> list[State]:
    """States from every layer at its lightest level to every layer at its heaviest, each
    one move heavier: the move with the most predicted cost (``weight`` x size +
    (1 - ``weight``) x MACs, relative to the teacher) saved per accuracy lost."""
    state: State = {n: {k: 0 for k in knobs_of(space, n)} for n in space.layers}

    def cost(st: State) -> tuple[float, float]:
        size, macs, drop = sens.predict(st)
        return weight * size + (1 - weight) * macs, drop

    path = [_copy(state)]
    here = cost(state)
    while True:
        best: tuple[float, str, str, tuple[float, float]] | None = None
        for n, knobs in state.items():
            for knob, i in knobs.items():
                if i + 1 >= len(LADDERS[knob]):
                    continue
                knobs[knob] = i + 1
                there = cost(state)
                knobs[knob] = i
                saved = here[0] - there[0]
                if saved <= 0:
                    continue
                score = saved / (max(0.0, there[1] - here[1]) + _EPS)
                if best is None or score > best[0]:
                    best = (score, n, knob, there)
        if best is None:
            return path
        _, n, knob, here = best
        state[n][knob] += 1
        path.append(_copy(state))


def _copy(state: State) -> State:
    return {n: dict(k) for n, k in state.items()}


def _plan(state: State) -> CompressionPlan:
    layers = {n: LayerPlan(**{knob: LADDERS[knob][i] for knob, i in k.items()})
              for n, k in state.items()}
    return CompressionPlan(layers, temperature=4.0, alpha=0.7)


#: (weight of size in the greedy's cost, which predicted cost cuts it): a path that
#: favours FLOPs and one that favours size
_PATHS = ((0.25, 1), (0.75, 0))
#: where each path is cut: this far from its lightest to its heaviest predicted cost, on a
#: log scale (the heavy end, where uniform compression loses most)
_CUTS = (0.6, 0.75, 0.9)


def guided_plans(sens: Sensitivity, space: SearchSpace, n: int = N_GUIDED) -> list[CompressionPlan]:
    """Up to ``n`` distinct plans from the greedy paths, half favouring FLOPs and half size:
    on each, the first plan whose predicted FLOPs (resp. size) falls below each cut."""
    chosen: list[State] = []
    per_path = math.ceil(n / len(_PATHS))
    for weight, which in _PATHS:
        path = greedy_path(sens, space, weight)
        costs = [max(sens.predict(st)[which], 1e-12) for st in path]
        light, heavy = math.log(costs[0]), math.log(costs[-1])
        for cut in _CUTS[:per_path]:
            target = math.exp(light + cut * (heavy - light))
            st = next(s for s, c in zip(path, costs, strict=True) if c <= target * (1 + 1e-9))
            if st not in chosen:
                chosen.append(st)
    return [space.plan_from_params(space.params_of(_plan(s))) for s in chosen[:n]]


@dataclass(frozen=True)
class ProbeSpec:
    """What a Ray task needs to probe some layers of the teacher (plain data)."""

    model: str
    data: str
    layers: tuple[str, ...]
    pruning: str
    data_dir: str | None = None
    subset: int | None = None
    val_subset: int | None = None
    threads: int = 1
    gpu_fraction: float = 0.0
    trust: tuple[str, ...] = ()  # user modules the search trusts
    knobs: tuple[str, ...] = ()  # opt-in knobs searched too
    space: dict[str, Any] | None = None  # the user's space file (spaces/rules.py)


def probe_task(spec: ProbeSpec, teacher_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`probe_layers` in a Ray task: the data set and teacher rebuilt in the worker,
    on its GPU share when it has one (as trials run)."""
    from slimtune.search.worker import set_up

    device, data, teacher = set_up(spec, teacher_state)
    space = SearchSpace.from_model(teacher, data.input_shape, spec.pruning, spec.knobs,
                                   rules=spec.space)
    val = data.val.head(PROBE_EXAMPLES).to(device)
    return probe_layers(teacher, space, data.input_shape, list(spec.layers), val,
                        train=data.train.to(device))


def measure_sensitivity(
    teacher: nn.Module, space: SearchSpace, input_shape: tuple[int, ...], teacher_size: int,
    probe: Any, specs: list[ProbeSpec],
) -> Sensitivity:
    """Run the probes (``probe(spec)`` -> a Ray object ref of :func:`probe_task`'s result, one
    per spec, all at once) and put the table together."""
    import ray

    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    shrink: dict[str, dict[str, float]] = {}
    base = 0.0
    for part in ray.get([probe(s) for s in specs]):
        accuracy.update(part["accuracy"])
        shrink.update(part["shrink"])
        base = part["base"]  # the same teacher and examples in every task
    size, macs = layer_shares(teacher, space, input_shape, teacher_size)
    return Sensitivity(base, accuracy, size, macs, shrink)
