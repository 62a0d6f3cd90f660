"""The exceptions the package raises on purpose, in one place (every layer imports them from here)."""
from __future__ import annotations


class InputError(ValueError):
    """A user-supplied argument is invalid; the message names the argument and what is wrong."""


class DivergenceError(RuntimeError):
    """The loss became non-finite during optimisation."""


class BackendError(RuntimeError):
    """An explicitly requested compute backend cannot run here, or failed."""


class OutputError(OSError):
    """An output could not be written completely (disk full, quota, I/O error, a file system that refuses it);
    the message names the file and the reason. Nothing half-written is left under the final name and the
    previous outputs of that name are kept."""


__all__ = ["InputError", "DivergenceError", "BackendError", "OutputError"]
