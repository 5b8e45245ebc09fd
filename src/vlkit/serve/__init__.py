"""The web app (`vlkit serve`): see app.py; its limits are `ServeLimits` (limits.py)."""

from vlkit.serve.app import create_app, run_server
from vlkit.serve.limits import ServeLimits

__all__ = ["ServeLimits", "create_app", "run_server"]
