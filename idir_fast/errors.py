"""The exceptions the package raises on purpose, in one place (every layer imports them from here)."""
from __future__ import annotations


class InputError(ValueError):
    """A user-supplied argument is invalid; the message names the argument and what is wrong."""


class DivergenceError(RuntimeError):
    """The loss became non-finite during optimisation."""


class BackendError(RuntimeError):
    """An explicitly requested compute backend cannot run here, or failed."""


__all__ = ["InputError", "DivergenceError", "BackendError"]
