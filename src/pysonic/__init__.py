"""pysonic: SONIC inference as a service for high-energy physics, in Python."""

from __future__ import annotations

from pysonic._version import __version__

__all__ = ["__version__"]
