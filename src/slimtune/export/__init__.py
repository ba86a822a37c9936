"""The compact artifact, its loader, and the model card."""

from slimtune.export.artifact import decode, encode, load, read_header
from slimtune.export.card import export

__all__ = ["decode", "encode", "export", "load", "read_header"]
