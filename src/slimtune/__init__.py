"""slimtune: compress a trained PyTorch model by multi-objective search.

Public entry points (each CLI command is one of these calls)::

    slimtune.search(SearchConfig(...))     # slimtune search (or search(trials=10, ...))
    slimtune.front(run_dir)                # slimtune front
    slimtune.export(run_dir, trial, path)  # slimtune export
    slimtune.load(path) -> torch.nn.Module # load an exported file
    slimtune.evaluate(path), slimtune.train(model, data)

``slimtune.search`` and ``slimtune.export`` are also the subpackages of those names
(``slimtune.export.encode``, ``slimtune.search.SearchConfig``): calling them calls the
entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from slimtune.errors import SlimtuneError  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["__version__", "SlimtuneError", "SearchConfig", "search", "front", "export", "load",
           "evaluate", "train"]


def __getattr__(name: str) -> Any:  # lazy: `import slimtune` stays cheap
    if name == "SearchConfig":
        from slimtune.search.config import SearchConfig

        return SearchConfig
    if name in ("search", "export"):
        # `slimtune.search` and `slimtune.export` are subpackages that can be called like
        # functions: importing one binds it here whatever the import order
        import importlib

        return importlib.import_module(f"slimtune.{name}")
    raise AttributeError(name)


def front(run_dir: Any) -> Any:
    """The Pareto front of a run: ``{"teacher": {...}, "front": [...]}``."""
    from slimtune.viz.report import front_info

    return front_info(run_dir).to_dict()


def load(path: Any, *, trust_module: str | list[str] | None = None,
         model: nn.Module | None = None) -> nn.Module:
    """The ``torch.nn.Module`` in an exported slimtune file (never unpickles anything).

    Safe on a file from anyone: it runs no code the file chooses. A file naming your own
    model (``mymodule:factory``) loads only with ``trust_module="mymodule"``, or pass the
    uncompressed architecture yourself: ``load(path, model=MyNet())``."""
    from slimtune.export.artifact import load as _load

    return _load(path, trust_module=trust_module, model=model)


def evaluate(
    path: Any, data: str | None = None, split: str = "test", data_dir: Any = None, *,
    trust_module: str | list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of an exported file on a dataset split."""
    from slimtune.export.card import evaluate as _evaluate

    return _evaluate(path, data, split, data_dir, trust_module=trust_module)


def train(model: str, data: str, **kwargs: Any) -> dict[str, Any]:
    """Train (or fetch from the cache) the teacher for ``model`` on ``data``."""
    from slimtune.models.teacher import train_command

    return train_command(model, data, **kwargs)
