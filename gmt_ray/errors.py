"""What bad input raises: every command prints the message and exits with 2, having started
nothing. Nothing here imports gmt-ray (the ground floor, beside ``names``)."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "UsageError"]


class UsageError(ValueError):
    """Bad input to a command: a config, a data file, a flag, a cluster that cannot be
    reached. The command prints it and exits with 2."""


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem, one per line."""


class DataError(ValueError):
    """A data file or data set that cannot be used as configured (named, with its row)."""
