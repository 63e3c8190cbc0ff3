"""``python -m pysonic`` runs the command line."""

from __future__ import annotations

from pysonic.cli import main

main()
