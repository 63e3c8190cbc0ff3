"""Optional dependencies of the models package, with the exact install command on failure."""

from __future__ import annotations

from types import ModuleType

__all__ = ["require_torch"]


def require_torch() -> ModuleType:
    """Import torch or explain how to get it (models ship as ONNX; torch is only for export)."""
    try:
        import torch
    except ModuleNotFoundError as err:
        msg = "exporting or training models needs PyTorch: pip install 'pysonic[torch]'"
        raise ModuleNotFoundError(msg) from err
    return torch
