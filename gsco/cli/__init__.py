"""The ``gsco`` command line."""

from gsco.cli._app import app, main

__all__ = ["app", "main"]
