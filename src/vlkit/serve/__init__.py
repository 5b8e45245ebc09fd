"""The web app (`vlkit serve`): see app.py."""

from vlkit.serve.app import create_app, run_server

__all__ = ["create_app", "run_server"]
