"""slimtune: compress a trained PyTorch model by multi-objective search.

Public entry points (each CLI command is one of these calls)::

    slimtune.search(SearchConfig(...))     # slimtune search
    slimtune.front(run_dir)                # slimtune front
    slimtune.export(run_dir, trial, path)  # slimtune export
    slimtune.load(path) -> torch.nn.Module # load an exported file
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from slimtune.errors import SlimtuneError  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["__version__", "SlimtuneError", "SearchConfig", "search", "front", "export", "load",
           "evaluate"]


def __getattr__(name: str) -> Any:  # lazy: `import slimtune` stays cheap
    if name == "SearchConfig":
        from slimtune.search.config import SearchConfig

        return SearchConfig
    raise AttributeError(name)


def search(config: Any = None, **kwargs: Any) -> Any:
    """Run a search; ``search(SearchConfig(...))`` or ``search(trials=10, ...)``."""
    from slimtune.search import SearchConfig
    from slimtune.search import search as _search

    if config is None:
        config = SearchConfig(**kwargs)
    return _search(config)


def front(run_dir: Any) -> Any:
    """The Pareto front of a run: ``{"teacher": {...}, "front": [...]}``."""
    from slimtune.viz.report import front_info

    return front_info(run_dir).to_dict()


def export(run_dir: Any, trial: int, out: Any, *, onnx: bool = False) -> dict[str, Any]:
    """Export one trial of a run (and ``.onnx`` beside it if asked); returns the model card."""
    from slimtune.export.card import export as _export

    return _export(run_dir, trial, out, onnx=onnx)


def load(path: Any) -> nn.Module:
    """The ``torch.nn.Module`` in an exported slimtune file (never unpickles anything)."""
    from slimtune.export.artifact import load as _load

    return _load(path)


def evaluate(path: Any, data: str | None = None, split: str = "test") -> dict[str, Any]:
    """Accuracy of an exported file on a dataset split."""
    from slimtune.export.card import evaluate as _evaluate

    return _evaluate(path, data, split)
