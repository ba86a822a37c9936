"""The trust boundary: which code a model or data-set *name* may import.

A ``.slim`` file, its model card and a stored study are data. They may name a built-in
model or data set, a ``torchvision:`` model and a plan; they never choose code to import
or call. A ``module:attribute`` name (your model factory, your data function) is
resolved only when the caller trusts its module, per call:

- a name the caller passes itself (``slimtune search --model mymodule:factory``, or
  ``SearchConfig(model=...)``) is the caller's choice, so its module is trusted for that
  call (:meth:`Trust.with_names`);
- a name read from a file is resolved only if the caller named its module with
  ``--trust-module MODULE`` / ``trust_module="MODULE"`` (:meth:`Trust.of`); otherwise
  :class:`UntrustedCodeError` says which module the file asks for and how to allow it.

Trusting ``pkg`` trusts its submodules (``pkg.models``) too. This module is the only
place that imports a name's module: models (``models.zoo``) and data sets
(``data.datasets``) resolve user names through :func:`resolve`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from slimtune.errors import ConfigError, UnknownNameError, UntrustedCodeError

__all__ = ["Trust", "NO_TRUST", "user_module", "resolve", "check"]

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Trust:
    """The user modules a call may import (plain data; travels to Ray workers)."""

    modules: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for m in self.modules:
            if not isinstance(m, str) or not _MODULE.fullmatch(m):
                raise ConfigError(f"`--trust-module` must be a dotted module name like "
                                  f"`mypackage.models`, but got {m!r}")

    @classmethod
    def of(cls, modules: str | Iterable[str] | None) -> Trust:
        """Trust from what the caller said: ``None``, one module or several."""
        if modules is None:
            return NO_TRUST
        if isinstance(modules, str):
            modules = [modules]
        return cls(frozenset(m.strip() for m in modules))

    def with_names(self, *names: str | None) -> Trust:
        """This trust plus the modules of names the caller passed itself."""
        extra = {m for m in (user_module(n) for n in names if n) if m is not None}
        return self if extra <= self.modules else Trust(self.modules | extra)

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def to_list(self) -> list[str]:
        return sorted(self.modules)


NO_TRUST = Trust()


def user_module(name: str) -> str | None:
    """The module a name would import: ``"pkg.mod"`` for ``"pkg.mod:attr"``; None for a
    built-in, ``torchvision:`` or ``memory:`` name (an object given in Python, which
    resolves only in its own session: :mod:`slimtune.inmemory`)."""
    if not isinstance(name, str) or ":" not in name or name.startswith("torchvision:"):
        return None
    if name.startswith("memory:"):  # a Python object of this session (slimtune.inmemory)
        return None
    if re.fullmatch(r"imagefolder\d*", name.partition(":")[0]):  # image files (data/folder.py)
        return None
    return name.partition(":")[0]


def check(name: str, what: str, trust: Trust, source: str | None) -> None:
    """Refuse a ``module:attribute`` name whose module is not trusted.

    ``source`` says where the name comes from (``"the artifact m.slim"``); None means the
    caller passed it, which is trusted.
    """
    module = user_module(name)
    if module is None or source is None or trust.allows(module):
        return
    raise UntrustedCodeError(
        f"{source} names the {what} `{name}`, which would import and run code from module "
        f"`{module}`; a file never chooses code to run, so slimtune refused. If you trust "
        f"that module, allow it with `--trust-module {module}` (in Python: "
        f"`trust_module=\"{module}\"`)"
    )


def resolve(name: str, what: str, trust: Trust, source: str | None = None) -> object:
    """The attribute a ``"package.module:attribute"`` name denotes, imported only if
    ``trust`` allows its module (or ``source`` is None: the caller's own name)."""
    import importlib

    module_name, _, attr = name.partition(":")
    if not _MODULE.fullmatch(module_name) or not _ATTR.fullmatch(attr):
        raise UnknownNameError(f"{what} `{name}` is not of the form `package.module:function`")
    check(name, what, trust, source)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UnknownNameError(f"cannot load {what} `{name}`: {exc}") from None
