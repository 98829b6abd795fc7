"""The ``interprune`` command line: local commands (compress, demo, models) and the service commands."""
from service.cli.main import main

__all__ = ["main"]
