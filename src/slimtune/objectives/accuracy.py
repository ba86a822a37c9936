"""Top-1 accuracy of a classifier on a split (or on tensors ``x, y``), read in batches.

The objective is :func:`slimtune.models.train.accuracy`, kept beside the training loop
that also reports it (teacher training must not depend on ``objectives/``); this module
is its name in the objective table.
"""

from __future__ import annotations

from slimtune.models.train import accuracy, logits_of

__all__ = ["accuracy", "logits_of"]
