"""SIGTERM during a search is handled as Ctrl-C is.

``docker stop``, SLURM, systemd and ``timeout`` send SIGTERM; Ray's own handler in the
driver would dump its C++ stack and leave trials RUNNING. While a search runs,
:func:`sigterm_as_interrupt` makes it raise :class:`Terminated` (a KeyboardInterrupt), so
the engine's clean-up for Ctrl-C runs: running trials are marked failed and requeued.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

__all__ = ["Terminated", "Signals", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, SLURM, systemd, ``timeout``) during a search: handled as
    Ctrl-C is: running trials are marked failed and retried on ``--resume``."""

    signum = signal.SIGTERM


class Signals:
    """Whether SIGTERM arrived: Ray's ``wait`` turns any exception a signal handler raises
    during it into a plain KeyboardInterrupt, so the type alone cannot tell."""

    terminated = False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Any:
    """While a search runs in the main thread, SIGTERM raises :class:`Terminated` (a
    KeyboardInterrupt) instead of killing the process (Ray's own handler would dump its
    C++ stack and leave trials RUNNING). Yields the :class:`Signals` seen."""
    seen = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(_signum: int, _frame: Any) -> None:
        seen.terminated = True
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield seen
    except KeyboardInterrupt:
        if seen.terminated:
            raise Terminated() from None
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
