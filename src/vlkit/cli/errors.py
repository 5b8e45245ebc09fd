"""`UsageError`: a mistake in what the user typed, which `vlkit` reports in one line (status 2)."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad command-line input (a flag's value the command cannot use), reported in one line.

    Raised by the `vlkit.cli` commands, whose messages name the flag (e.g. "--labels is empty");
    library code raises ValueError naming its parameter instead. A ValueError subclass, so
    callers of a command function that catch ValueError keep working.
    """
