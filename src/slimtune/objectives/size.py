"""Size objective: bytes of the exported compact artifact."""

from __future__ import annotations

from torch import nn

from slimtune.spaces.plan import CompressionPlan

__all__ = ["size_bytes"]


def size_bytes(
    student: nn.Module,
    model_name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    plan: CompressionPlan,
) -> int:
    """Length in bytes of the artifact ``slimtune export`` writes for this student."""
    from slimtune.export.artifact import encode

    return len(encode(student, model_name, num_classes, input_shape, plan))
