"""Teacher training with one standard recipe, cached by (model, data, recipe, seed).

Recipe: SGD with Nesterov momentum, a one-cycle learning-rate schedule, label smoothing,
weight decay, the data set's own augmentation, mixed precision (bfloat16 autocast) on GPU.
It runs the one training loop (:func:`slimtune.models.train.train_loop`) over the training
split's batches: a seeded permutation each epoch, augmented with the same generator.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtune import inmemory
from slimtune.data.datasets import Splits
from slimtune.data.split import Batch
from slimtune.errors import ConfigError, RunDirError
from slimtune.files import write_atomic
from slimtune.models.train import accuracy, train_loop
from slimtune.models.zoo import build_model
from slimtune.trust import NO_TRUST, Trust

__all__ = ["TeacherConfig", "train_teacher", "load_or_train_teacher", "cache_dir",
           "default_teacher_epochs", "load_checkpoint", "train_command", "data_fingerprint",
           "state_dict_mismatch"]

#: epochs when none are given: small data sets train for longer
_DEFAULT_EPOCHS = {"digits": 40}


def default_teacher_epochs(data: str) -> int:
    return _DEFAULT_EPOCHS.get(data, 10)


@dataclass(frozen=True)
class TeacherConfig:
    epochs: int = 40
    lr: float = 0.05  # peak SGD learning rate of the one-cycle schedule, batch 128
    momentum: float = 0.9  # Nesterov
    batch_size: int = 128
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"`--epochs` must be at least 1, but got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("teacher `lr` and `batch_size` must be positive")


def cache_dir() -> Path:
    """Where trained teachers are cached: ``$SLIMTUNE_CACHE`` or ``~/.cache/slimtune``."""
    return Path(os.environ.get("SLIMTUNE_CACHE") or Path.home() / ".cache" / "slimtune")


def cache_key(model: str, data: str, subset: int | None, config: TeacherConfig,
              fingerprint: str | None = None) -> dict[str, Any]:
    """What a cached teacher depends on: the model, the training data (by name and subset,
    and by a fingerprint of the training split itself: the same name in another
    ``--data-dir`` can hold other data) and the whole recipe."""
    return {"model": model, "data": data, "subset": subset, "recipe": asdict(config),
            "train_split": fingerprint}


def data_fingerprint(data: Splits) -> str:
    """A SHA-256 of the training split (images and labels), the data a teacher learns from.
    The validation split is not in it: it never changes the weights (``--val-subset``
    picks fewer validation examples and trains the same teacher)."""
    return data.train.fingerprint()


def _cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{key['model']}-{key['data']}")
    return cache_dir() / "teachers" / f"{safe}-{digest}.pt"


def train_teacher(
    model: nn.Module,
    data: Splits,
    config: TeacherConfig,
    on_epoch: Callable[[int, int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train ``model`` on the train split; ``on_epoch(epoch, epochs, val_accuracy)`` and
    ``on_step(step, total_steps)`` report progress."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device)
    train, val = data.train.to(device), data.val.to(device)
    total = max(1, config.epochs * math.ceil(len(train) / config.batch_size))  # steps
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          nesterov=True, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    amp = device.type == "cuda"

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return F.cross_entropy(model(batch.x), batch.y,
                                   label_smoothing=config.label_smoothing)

    def progress(_epoch: int, step: int, _batch: Batch, _loss: torch.Tensor) -> None:
        if on_step is not None:
            on_step(step, total)

    def report(epoch: int) -> None:
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, accuracy(model, val))

    train_loop(model, train, loss_fn, opt, sched, epochs=config.epochs,
               batch_size=config.batch_size, generator=gen, on_batch=progress,
               on_epoch=report)
    return model.cpu()


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a user's trained weights (a state dict saved with ``torch.save``), safely."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: not a torch.save file
        raise ConfigError(f"--checkpoint {p} is not a file saved with torch.save of plain "
                          f"tensors ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"--checkpoint {p} holds a {type(state).__name__}, not a state dict")
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise ConfigError(f"--checkpoint {p} is not a state dict of this model: {mismatch}")
    model.load_state_dict(state)
    return model.eval()


def state_dict_mismatch(model: nn.Module, state: dict[str, Any], shown: int = 3) -> str:
    """How ``state`` differs from ``model``'s state dict, in one sentence ("" if it fits):
    missing keys, unexpected keys and tensors of another shape, the first few of each."""
    own = model.state_dict()

    def few(names: list[str]) -> str:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return ", ".join(f"`{n}`" for n in names[:shown]) + more

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items()
              if k in state and (not isinstance(state[k], torch.Tensor)
                                 or tuple(state[k].shape) != tuple(v.shape))]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({few(shapes)})")
    return "; ".join(parts)


def _load_state(model: nn.Module, path: Path) -> nn.Module:
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001
        raise RunDirError(f"cannot read the cached teacher {path}: {exc}; delete it to retrain"
                          ) from None
    return model.eval()


def _save(model: nn.Module, path: Path) -> None:
    """Atomically (a full disk leaves no ``teacher.pt.tmp`` nor half a file)."""
    write_atomic(path, b"", "teacher", writer=lambda tmp: torch.save(model.state_dict(), tmp))


def load_or_train_teacher(
    path: Path | None,
    model_name: str,
    data: Splits,
    config: TeacherConfig,
    on_epoch: Callable[[int, int, float], None] | None = None,
    *,
    data_name: str | None = None,
    subset: int | None = None,
    checkpoint: str | Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
    trust: Trust = NO_TRUST,
    source: str | None = None,
) -> tuple[nn.Module, str]:
    """The teacher for a run, and where it came from: ``"run"`` (``path`` exists),
    ``"checkpoint"`` (the user's weights), ``"memory"`` (a model given as a Python object,
    with its weights), ``"cache"`` or ``"trained"``. It is then saved
    at ``path`` (the run directory's copy) and, when trained, in the cache.
    ``trust``/``source``: where the model name comes from (see :mod:`slimtune.trust`)."""
    torch.manual_seed(config.seed)
    model = build_model(model_name, data.num_classes, data.input_shape, trust=trust,
                        source=source)
    if path is not None and path.exists():
        return _load_state(model, path), "run"
    if inmemory.is_memory(model_name):  # a model given as a Python object: as it is
        source = "memory"
    elif checkpoint is not None:
        source = "checkpoint"
        load_checkpoint(model, checkpoint)
    else:
        key = cache_key(model_name, data_name or data.name, subset, config,
                        data_fingerprint(data))
        cached = _cache_path(key)
        if cached.exists():
            source = "cache"
            _load_state(model, cached)
        else:
            source = "trained"
            t0 = time.perf_counter()
            train_teacher(model, data, config, on_epoch, on_step, device)
            _save(model, cached)
            meta = {"key": key,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "val_accuracy": accuracy(model, data.val),
                    "test_accuracy": accuracy(model, data.test)}
            write_atomic(cached.with_suffix(".json"), json.dumps(meta, indent=2) + "\n",
                         "teacher cache entry")
    if path is not None:
        _save(model, path)
    return model, source


def train_command(
    model: str,
    data: str,
    *,
    epochs: int | None = None,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``slimtune train``: train the teacher into the cache (or find it there) and report
    its validation and test accuracy, training time and cache path."""
    from slimtune.data.datasets import load_dataset

    ds = load_dataset(data, data_dir, subset)
    config = TeacherConfig(epochs=epochs or default_teacher_epochs(data), seed=seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    teacher, source = load_or_train_teacher(
        None, model, ds, config, on_epoch, data_name=data, subset=subset, on_step=on_step,
        device=device,
    )
    path = _cache_path(cache_key(model, data, subset, config, data_fingerprint(ds)))
    seconds = time.perf_counter() - t0
    if source == "cache" and path.with_suffix(".json").is_file():
        seconds = json.loads(path.with_suffix(".json").read_text()).get("seconds", seconds)
    return {
        "model": model, "data": data, "subset": subset, "epochs": config.epochs,
        "source": source, "path": str(path), "train_seconds": round(seconds, 1),
        "device": device,
        "val_accuracy": accuracy(teacher, ds.val),
        "test_accuracy": accuracy(teacher, ds.test),
        "parameters": sum(p.numel() for p in teacher.parameters()),
    }
