"""The one measuring path: a student -> its artifact, the model decoded from it, and every
objective measured on that model (the numbers a user gets from ``slimtune export``).

Per trial the student is copied without its parametrizations once before training
(:meth:`Measured.of`: the FLOPs, the stored-weight counts and the fixed-width size are
exact from then on, since fine-tuning keeps masks, bits and shapes) and once after it
(:meth:`Measured.again`: the new weights, so a new artifact whose entropy-coded size is
the one on the front); the plain copy is the structure the artifact is decoded into, so
the compressed model is never rebuilt from the zoo and the plan.

Two sizes, each named for what it is: ``size_bytes``, the length of the artifact (the
file a user exports: entropy-coded, so it depends on the weights), and
``fixed_size_bytes``, the same artifact with every stream fixed-width: an upper bound of
``size_bytes`` that training cannot change, which the budget check before training uses.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtune.data.split import Split
from slimtune.objectives.flops import FlopsReport, count_flops
from slimtune.objectives.table import OBJECTIVES, objective

__all__ = ["Measured", "RECORDED"]

#: objectives every trial records, whether or not the study optimizes them
RECORDED = ("accuracy", "size", "flops")


@dataclass
class Measured:
    """A student's artifact and what is measured of it (lazily, each once)."""

    blob: bytes
    #: the length of the fixed-width layout: an upper bound of ``len(blob)``, the plan's
    fixed_size: int
    flops: FlopsReport  # dense / effective / bit operations, exact from the plan
    stored: dict[str, tuple[int, int]]  # compressed layer -> (weights stored, bits)
    input_shape: tuple[int, ...]
    val: Split  # the validation split accuracy is measured on
    device: torch.device | str = "cpu"  # where latency is timed
    structure: nn.Module | None = field(default=None, repr=False)  # the plain copy
    header: Any = field(default=None, repr=False)
    #: how latency is timed (objectives/latency.py; None: batch 1 in PyTorch)
    latency: Any = None
    #: the training split: a qdq ONNX file timed in onnxruntime is calibrated on it
    calibrate: Split | None = field(default=None, repr=False)
    _model: nn.Module | None = field(default=None, repr=False)
    _accuracy: float | None = field(default=None, repr=False)

    @classmethod
    def of(cls, student: nn.Module, model_name: str, num_classes: int,
           input_shape: tuple[int, ...], plan: Any, val: Split,
           device: torch.device | str = "cpu", *, latency: Any = None,
           calibrate: Split | None = None) -> Measured:
        """Encode ``student`` (made by ``compress.apply(teacher, plan)``) and count its
        FLOPs on the plain copy the artifact is made from. ``latency`` (a
        :class:`~slimtune.objectives.latency.LatencyConfig`) and ``calibrate`` say how
        the latency objective times it."""
        from slimtune.compress.plain import plain_copy
        from slimtune.export.artifact import encode_plain, stored_weights
        from slimtune.export.header import Header

        header = Header(model_name, int(num_classes), tuple(int(s) for s in input_shape), plan)
        plain, parts = plain_copy(student)
        stored = stored_weights(plain, plan)
        report = count_flops(plain, header.input_shape, stored)
        fixed = len(encode_plain(plain, parts, header, entropy=False))
        out = cls(encode_plain(plain, parts, header), fixed, report, stored,
                  header.input_shape, val, device, plain, header, latency, calibrate)
        out.model  # noqa: B018 - decoded now: what cannot be stored fails before training
        return out

    def again(self, student: nn.Module) -> Measured:
        """The same student after training: new weights, so a new artifact; its size,
        FLOPs and stored weights are the plan's, known already."""
        from slimtune.compress.plain import plain_copy
        from slimtune.export.artifact import encode_plain

        plain, parts = plain_copy(student)
        out = Measured(encode_plain(plain, parts, self.header), self.fixed_size, self.flops,
                       self.stored,
                       self.input_shape, self.val, self.device, plain, self.header,
                       self.latency, self.calibrate)
        out.model  # noqa: B018 - decoded now, as before training
        return out

    @property
    def model(self) -> nn.Module:
        """The model decoded from :attr:`blob` (eval mode, CPU): what is measured."""
        if self._model is None:
            from slimtune.export.artifact import decode

            self._model = decode(self.blob, structure=self.structure)[0]
        return self._model

    def accuracy(self) -> float:
        if self._accuracy is None:
            self._accuracy = accuracy_on(self.model, self.val)
        return self._accuracy

    def latency_ms(self) -> float:
        from slimtune.objectives.latency import LatencyConfig, latency_ms, onnx_latency_ms

        config = self.latency or LatencyConfig()
        if config.runtime == "onnxruntime":
            return onnx_latency_ms(self.model, self.input_shape, self.header.plan, config,
                                   self.calibrate)
        return latency_ms(copy.deepcopy(self.model), self.input_shape, self.device,
                          batch=config.batch)

    def results(self, objectives: Iterable[str] = (), *,
                test: Split | None = None) -> dict[str, Any]:
        """Metric -> value for the recorded objectives and ``objectives``, with
        ``dense_flops``, ``bitops``, ``fixed_size_bytes`` and ``stored_weights`` (so
        every trial has its bits per stored weight); ``test`` (reports only, never the
        search) adds ``test_accuracy``."""
        names = list(dict.fromkeys([*RECORDED, "weights", *objectives]))
        out: dict[str, Any] = {OBJECTIVES[n].metric: objective(n).measure(self) for n in names}
        out["dense_flops"] = self.flops.dense
        out["bitops"] = self.flops.bitops
        out["fixed_size_bytes"] = self.fixed_size
        if test is not None:
            out["test_accuracy"] = accuracy_on(self.model, test)
        return out


def accuracy_on(model: nn.Module, data: Split) -> float:
    """Top-1 accuracy of ``model`` on a split."""
    from slimtune.objectives.accuracy import accuracy

    return accuracy(model, data)
