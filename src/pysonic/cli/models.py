"""``pysonic models ...``: export and train the shipped HEP models (needs ``pysonic[torch]``)."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="Export and train the HEP models (ParticleNet, ParT, DeepMET).",
                  no_args_is_help=True)
