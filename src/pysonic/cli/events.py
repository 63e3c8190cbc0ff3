"""``pysonic events ...``: generate Pythia8 + FastJet events and model inputs."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="Generate events (Pythia8 + FastJet) and model inputs.",
                  no_args_is_help=True)
