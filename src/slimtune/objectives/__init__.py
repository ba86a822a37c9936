"""The objectives: accuracy on the validation split, size in bytes, FLOPs (MACs)."""

from slimtune.objectives.accuracy import accuracy, logits_of
from slimtune.objectives.flops import FlopsReport, count_flops, flops
from slimtune.objectives.size import size_bytes

__all__ = ["accuracy", "logits_of", "FlopsReport", "count_flops", "flops", "size_bytes"]
