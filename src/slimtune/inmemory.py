"""Models and data sets given as Python objects (a notebook's), under names that resolve
only where those objects are: ``memory:model-<id>`` and ``memory:data-<id>``.

``slimtune.search(model=net, train=..., val=..., test=...)`` registers the objects here and
searches under their names; every place that resolves a model or data-set name
(``models.zoo.build_model``, ``data.datasets.load_dataset``) asks this module first. Ray
workers are other processes: during a search each object is held by a small Ray actor
named after it (:func:`serve`), from which a worker fetches it once.

A file or study naming ``memory:...`` therefore names no code and resolves to nothing in
another process: the model of such an artifact comes from the caller
(``slimtune.load(path, model=MyNet())``), as the trust rule wants (:mod:`slimtune.trust`).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import torch
from torch import nn

from slimtune.errors import DataError, UnknownNameError

__all__ = ["PREFIX", "is_memory", "register_model", "register_data", "model", "data",
           "serve", "release", "as_pair"]

PREFIX = "memory:"
_OBJECTS: dict[str, Any] = {}  # this process's objects, by name


def is_memory(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def register_model(net: nn.Module) -> str:
    """Hold a copy of ``net`` (its weights included: it is the teacher as is) under a new
    name."""
    if not isinstance(net, nn.Module):
        raise UnknownNameError(f"`model` must be a model name or a torch.nn.Module, but got "
                               f"{type(net).__name__}")
    name = f"{PREFIX}model-{uuid.uuid4().hex[:12]}"
    _OBJECTS[name] = copy.deepcopy(net).cpu().eval()
    return name


def register_data(train: Any, val: Any, test: Any) -> str:
    """Hold the three splits under a new name. A pair of tensors or arrays is held as
    tensors; a map-style torch Dataset of ``(x, y)`` items (or a DataLoader over one: its
    dataset) is kept as it is and streamed batch by batch (:mod:`slimtune.data.stream`);
    any other DataLoader is read once into tensors."""
    splits = tuple(_streamable(s) or as_pair(s, what) for s, what in
                   ((train, "`train`"), (val, "`val`"), (test, "`test`")))
    name = f"{PREFIX}data-{uuid.uuid4().hex[:12]}"
    _OBJECTS[name] = splits
    return name


def _streamable(obj: Any) -> Any:
    """The map-style Dataset to stream ``obj`` from (itself, or a DataLoader's), or None."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    ds = obj.dataset if isinstance(obj, DataLoader) else obj
    if isinstance(ds, Dataset) and not isinstance(ds, IterableDataset) \
            and hasattr(ds, "__len__"):
        return ds
    return None


def as_pair(obj: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``obj`` as ``(x, y)`` tensors: a pair as it is, a DataLoader's batches or a
    Dataset's items stacked."""
    from torch.utils.data import DataLoader, Dataset

    try:
        if isinstance(obj, DataLoader):
            xs, ys = zip(*((torch.as_tensor(x), torch.as_tensor(y)) for x, y in obj),
                         strict=True)
            return torch.cat(xs), torch.cat(ys)
        if isinstance(obj, Dataset):
            items = [obj[i] for i in range(len(obj))]  # type: ignore[arg-type]
            return (torch.stack([torch.as_tensor(x) for x, _ in items]),
                    torch.as_tensor([int(y) for _, y in items]))
        x, y = obj
        return torch.as_tensor(x), torch.as_tensor(y)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the object did
        raise DataError(f"{what} must be a pair (x, y) of tensors or arrays, a Dataset of "
                        f"(x, y) items or a DataLoader of (x, y) batches: "
                        f"{type(exc).__name__}: {exc}") from None


def _actor_name(name: str) -> str:
    return "slimtune-" + name.replace(":", "-")


def _get(name: str, what: str) -> Any:
    if name not in _OBJECTS:
        fetched = _from_actor(name)
        if fetched is None:
            hint = ("pass the architecture yourself: slimtune.load(path, model=MyNet())"
                    if what == "model" else "pass the data again in the same Python session")
            raise UnknownNameError(
                f"the {what} `{name}` was given as a Python object in another session and "
                f"is known nowhere else; {hint}")
        _OBJECTS[name] = fetched
    return _OBJECTS[name]


def model(name: str) -> nn.Module:
    """A fresh copy of the model held under ``name``, on the default device (as a model
    built under ``with torch.device("meta")`` is: the loader's bounds check)."""
    return copy.deepcopy(_get(name, "model")).to(torch.get_default_device())


def data(name: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The (train, val, test) pairs held under ``name``."""
    return _get(name, "data set")


# -- Ray: the objects travel to the workers ----------------------------------------------

class _Holder:
    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def get(self) -> Any:
        return self.obj


def serve(*names: str) -> list[Any]:
    """Hold the objects of ``names`` (those that are ``memory:`` names) in Ray actors for the
    workers; returns the actors (:func:`release` ends them)."""
    import ray

    actors = []
    for name in names:
        if is_memory(name):
            holder = ray.remote(num_cpus=0)(_Holder)
            actors.append(holder.options(name=_actor_name(name), get_if_exists=True)
                          .remote(_get(name, "object")))
    return actors


def release(actors: list[Any]) -> None:
    """End the actors :func:`serve` started (the search is over; this process keeps its
    own objects)."""
    import ray

    for actor in actors:
        ray.kill(actor)


def _from_actor(name: str) -> Any:
    """The object under ``name`` from its Ray actor, or None where there is none."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get(ray.get_actor(_actor_name(name)).get.remote())
    except (ValueError, ImportError):  # no such actor
        return None
