"""slimtune: compress a trained PyTorch model by multi-objective search.

Public entry points (each CLI command is one of these calls, all in :mod:`slimtune.api`)::

    slimtune.search(SearchConfig(...))     # slimtune search (or search(trials=10, ...))
    slimtune.resume(run_dir)               # slimtune search --resume
    slimtune.front(run_dir)                # slimtune front (with the suggested export)
    slimtune.report(run_dir)               # slimtune report (RUN_DIR/report.html)
    slimtune.export(run_dir, trial, path)  # slimtune export
    slimtune.finetune(run_dir, trial, path, epochs=E)  # slimtune finetune
    slimtune.load(path) -> torch.nn.Module # load an exported file
    slimtune.evaluate(path), slimtune.train(model, data)

``slimtune.search`` and ``slimtune.export`` are also the subpackages of those names
(``slimtune.export.encode``, ``slimtune.search.SearchConfig``): calling them calls the
entry point. They cannot be plain functions: importing any module of a subpackage
(``import slimtune.search.engine``) binds the subpackage to its name in ``slimtune``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from slimtune.errors import SlimtuneError  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.api import evaluate, finetune, front, load, report, resume, train
    from slimtune.search.config import SearchConfig

__all__ = ["__version__", "SlimtuneError", "SearchConfig", "search", "resume", "front",
           "report", "export", "finetune", "load", "evaluate", "train"]

_VERBS = ("resume", "front", "report", "finetune", "load", "evaluate", "train")


def __getattr__(name: str) -> Any:  # lazy: `import slimtune` stays cheap
    if name == "SearchConfig":
        from slimtune.search.config import SearchConfig

        return SearchConfig
    if name in ("search", "export"):
        # `slimtune.search` and `slimtune.export` are subpackages that can be called like
        # functions: importing one binds it here whatever the import order
        import importlib

        return importlib.import_module(f"slimtune.{name}")
    if name in _VERBS:
        from slimtune import api

        return getattr(api, name)
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
