"""The `vlkit` command line: the only code in vlkit that parses arguments (see main.py)."""

from vlkit.cli.main import main

__all__ = ["main"]
