"""Checks a search makes before it starts, and the errors it turns into one line.

Everything here runs before Ray starts or the teacher trains, so a mistake costs seconds
and leaves nothing behind: a ``--run-dir`` that cannot be written, a model that cannot
take the data set's inputs. :func:`as_user_error` turns a full disk or a failed storage
write during a search into one :class:`SlimtuneError` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slimtune.errors import ConfigError, OutputError, RunDirError
from slimtune.files import existing_ancestor
from slimtune.models.zoo import build_model
from slimtune.search.config import SearchConfig
from slimtune.trust import Trust

__all__ = ["check_run_dir", "check_model_runs", "as_user_error"]


def check_run_dir(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that cannot be created or written, before Ray starts."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} exists and is not a directory")
    above = existing_ancestor(run_dir)
    if not above.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is under {above}, which is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write --run-dir {run_dir}: {above} is not writable")


def check_model_runs(config: SearchConfig, data: Any, trust: Trust,
                      named_by: str | None) -> None:
    """Build the model and run a batch of two examples through it before anything else, so
    a model that cannot take the data (``torchvision:vit_b_16`` on 8 x 8 digits) fails now
    in one line, not after the teacher's training."""
    model = build_model(config.model, data.num_classes, data.input_shape, trust=trust,
                        source=named_by)
    x = next(data.train.batches(2)).x
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure: the pair does not fit
        raise ConfigError(f"--model {config.model} cannot take `{config.data}` inputs of shape "
                          f"{tuple(x.shape[1:])}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--model {config.model} must return logits of shape (batch, "
                          f"{data.num_classes}) on `{config.data}`, but returned {got}")
    if config.space:  # the space file against the model's layers, before any training
        from slimtune.spaces.space import SearchSpace

        SearchSpace.from_model(model, data.input_shape, config.pruning, config.knobs,
                               rules=config.space)


def as_user_error(exc: BaseException) -> BaseException:
    """A full disk or a storage failure during a search as one :class:`SlimtuneError`
    line; anything else unchanged."""
    import sqlalchemy.exc

    if isinstance(exc, OSError):
        name = f" {exc.filename}" if exc.filename else ""
        return OutputError(f"cannot write{name}: {exc.strerror or exc}")
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        return RunDirError(f"cannot write the study: {cause}")
    return exc
