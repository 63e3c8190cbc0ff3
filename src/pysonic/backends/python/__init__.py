"""Triton's Python backend: serve ``model.py`` files written for Triton, unchanged.

See :mod:`pysonic.backends.python.backend` for the execution model (in-process, one
``TritonPythonModel`` per instance, per-request responses) and
:mod:`pysonic.backends.python.pb_utils` for the ``triton_python_backend_utils`` API.
"""

from __future__ import annotations

from pysonic.backends.python.backend import PythonBackend

__all__ = ["PythonBackend"]
