"""The one root exception of slimtune and its subclasses.

Every error a user can cause (a bad name, a bad option, a file that is not ours) is a
:class:`SlimtuneError`; the CLI prints its message on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "SlimtuneError",
    "UnknownNameError",
    "ConfigError",
    "RunDirError",
    "ArtifactError",
    "ResourceError",
    "DataError",
    "SearchAborted",
    "UntrustedCodeError",
    "OutputError",
]


class SlimtuneError(Exception):
    """Root of all errors a user can cause. The message says what to do."""


class UnknownNameError(SlimtuneError, KeyError):
    """An unknown model, dataset or sampler name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(SlimtuneError, ValueError):
    """An option or config value out of its range."""


class RunDirError(SlimtuneError):
    """A directory that is not a slimtune run, or a trial that is not in it."""


class ArtifactError(SlimtuneError):
    """An exported file that is truncated, tampered with or not a slimtune artifact."""


class ResourceError(SlimtuneError):
    """Asked for CPUs or GPUs that the Ray cluster does not have."""


class DataError(SlimtuneError):
    """A data directory that is missing, incomplete or holds malformed files."""


class SearchAborted(SlimtuneError):
    """The search stopped early (too many failed trials); finished trials are kept."""


class UntrustedCodeError(SlimtuneError):
    """A file names code (a ``module:function``) that the caller did not trust."""


class OutputError(SlimtuneError):
    """An output file or directory that cannot be written (a full disk, a file in the way,
    no permission); nothing half-written is left behind."""
