"""Optional dependencies, imported on first use, with the exact install command on failure.

``import pysonic`` needs none of these; a function that does calls ``require(...)`` first, so a
missing package fails with the extra that brings it instead of a bare ``ModuleNotFoundError``.

Example::

    uproot = require("uproot")
    # ModuleNotFoundError: reading or writing ROOT files needs uproot:
    #     pip install 'pysonic[analysis]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: module -> (what needs it, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "uproot": ("reading or writing ROOT files", "analysis"),
    "hist": ("filling histograms", "analysis"),
    "coffea": ("coffea processors and the triton_wrapper adapter", "analysis"),
    "dask": ("dask graphs", "analysis"),
    "distributed": ("running on dask distributed workers", "analysis"),
    "dask_awkward": ("dask-awkward arrays", "analysis"),
    "torch": ("exporting or training models", "torch"),
    "pythia8mc": ("generating events", "events"),
    "jwt": ("verifying JWT bearer tokens", "auth"),
    "yaml": ("reading a YAML auth policy", "auth"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ModuleNotFoundError naming the pysonic extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        purpose, extra = EXTRAS.get(module, (f"this feature ({module})", "analysis"))
        msg = f"{purpose} needs {module}: pip install 'pysonic[{extra}]'"
        raise ModuleNotFoundError(msg, name=module) from err
