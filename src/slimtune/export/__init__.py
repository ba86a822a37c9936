"""The compact artifact, its loader, and the model card."""

import sys
import types

from slimtune.export.artifact import decode, encode, load, read_header
from slimtune.export.card import export

__all__ = ["decode", "encode", "export", "load", "read_header"]


class _CallableModule(types.ModuleType):
    """``slimtune.export(run_dir, trial, out, onnx=False, trust_module=None)`` exports a
    trial (see :func:`slimtune.export.card.export`)."""

    def __call__(self, run_dir, trial, out, **kwargs):  # type: ignore[no-untyped-def]
        return export(run_dir, trial, out, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
