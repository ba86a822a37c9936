"""The compact artifact, its loader, and the model card."""

import sys
import types

from slimtune.export.artifact import decode, encode, load, read_header

__all__ = ["decode", "encode", "export", "load", "read_header"]


def export(run_dir, trial, out, **kwargs):  # type: ignore[no-untyped-def]
    """:func:`slimtune.api.export` (it opens the run; ``export.card.export`` takes one
    opened)."""
    from slimtune.api import export as export_trial

    return export_trial(run_dir, trial, out, **kwargs)


class _CallableModule(types.ModuleType):
    """``slimtune.export(run_dir, trial, out, onnx=None, trust_module=None)`` exports a
    trial: it is :func:`slimtune.api.export` (which opens the run: export/ imports no
    search/ code of its own)."""

    def __call__(self, run_dir, trial, out, **kwargs):  # type: ignore[no-untyped-def]
        return export(run_dir, trial, out, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
