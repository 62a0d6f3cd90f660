"""The one place that reads ``IDIR_FAST_*`` environment variables.

A variable never changes a run behind the settings' back: each one only gives the default of a
:class:`~idir_fast.settings.RunSettings` field (:data:`SETTING_DEFAULTS`), which the run then records like any
other setting; an argument given in code or on the command line wins. The rest are process-level switches of
the command line and the tests (:data:`PROCESS_VARIABLES`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from .errors import InputError


def _choice(variable: str, mapping: Dict[str, Any]) -> Callable[[str], Any]:
    def parse(text: str):
        key = text.strip().lower()
        if key not in mapping:
            raise InputError(f"environment variable {variable}={text!r} must be one of {sorted(mapping)}")
        return mapping[key]

    return parse


def _text(text: str) -> str:
    return text.strip()


SETTING_DEFAULTS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    # variable: (RunSettings field it sets the default of, how its text becomes the field's value)
    "IDIR_FAST_BACKEND": ("backend", _text),
    "IDIR_FAST_PRECISION": ("precision", _text),
    "IDIR_FAST_CPU_FUSED": ("cpu_kernels", _choice("IDIR_FAST_CPU_FUSED", {"1": "fused", "0": "ops"})),
    "IDIR_FAST_SELF_CHECK": ("self_check", _choice("IDIR_FAST_SELF_CHECK", {"1": True, "0": False})),
    "IDIR_FAST_NO_MEMORY_CHECK": ("memory_check", _choice("IDIR_FAST_NO_MEMORY_CHECK", {"1": False, "0": True})),
    "IDIR_FAST_THREADS": ("threads", _text),
}

PROCESS_VARIABLES = {
    "IDIR_FAST_MALLOC": "keep or system: what idir_fast.keep_freed_memory() is asked (an opt-in of the caller)",
    "IDIR_FAST_TEST_PAUSE": "point:seconds — the kill tests' pause inside a save (tests only)",
}


def env_value(variable: str) -> Optional[str]:
    """The variable's text, ``None`` when unset or empty."""
    if variable not in SETTING_DEFAULTS and variable not in PROCESS_VARIABLES:
        raise KeyError(f"{variable} is not an idir_fast environment variable")
    text = os.environ.get(variable, "")
    return text if text.strip() else None


def env_flag(variable: str) -> bool:
    """Whether a 0/1 variable is set to 1."""
    return (env_value(variable) or "").strip() == "1"


def setting_default(field: str) -> Tuple[bool, Any]:
    """``(True, value)`` when an environment variable gives the default of setting ``field``, else
    ``(False, None)``; a bad value is an :class:`~idir_fast.errors.InputError` naming the variable."""
    for variable, (name, parse) in SETTING_DEFAULTS.items():
        if name == field:
            text = env_value(variable)
            if text is not None:
                return True, parse(text)
    return False, None


def variables_for_settings() -> Dict[str, str]:
    """Setting field → the environment variable that can give its default (for ``--help`` and the README)."""
    return {name: variable for variable, (name, _) in SETTING_DEFAULTS.items()}


__all__ = ["SETTING_DEFAULTS", "PROCESS_VARIABLES", "env_value", "env_flag", "setting_default",
           "variables_for_settings"]
