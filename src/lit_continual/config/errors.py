"""The one error type of configuration problems, and its exit code."""

from __future__ import annotations

import difflib

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A bad configuration value; the message names the key. Exits with code 2."""


def did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean `optim.lr`?)' for the closest known key, or ''."""
    prefix, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean `{prefix + '.' if prefix else ''}{close[0]}`?)"
