"""Importing a model.py the way Triton's stub does, inside the server process.

Triton runs each instance in its own stub process, appends the version directory and the model
directory to ``sys.path`` and imports ``<version>.model``, so a model.py can import its siblings
absolutely (``import utils``) or relatively (``from . import utils``). pysonic does the same
in-process: each instance imports its model.py afresh as ``<package>.model`` of a private package
whose ``__path__`` is the version directory (module-level state stays per instance, and a reload
runs the edited file). The ``sys.path`` entries are process-wide, as in one Triton stub: two
models whose siblings share a module name see the first one imported.

Example::

    module, package = import_model_file(path, "dense_1_0")
    model = module.TritonPythonModel()
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pysonic.backends.python import pb_utils

__all__ = ["calling", "forget_module", "import_model_file", "install_pb_utils"]

log = logging.getLogger(__name__)

PB_UTILS_NAME = "triton_python_backend_utils"
_counter = itertools.count()


def install_pb_utils() -> None:
    """Make ``import triton_python_backend_utils`` give pysonic's implementation."""
    current = sys.modules.get(PB_UTILS_NAME)
    if current is pb_utils:
        return
    if current is not None:
        log.warning(
            "replacing the imported module %s (%s) with pysonic's implementation for Python models",
            PB_UTILS_NAME,
            getattr(current, "__file__", "?"),
        )
    sys.modules[PB_UTILS_NAME] = pb_utils


def import_model_file(path: Path, tag: str) -> tuple[types.ModuleType, str]:
    """Import ``path`` as ``<private package>.<stem>``; returns (module, package name)."""
    install_pb_utils()
    version_dir = path.parent
    for entry in (str(version_dir), str(version_dir.parent)):
        if entry not in sys.path:
            sys.path.append(entry)
    package = f"_pysonic_python_models.{_identifier(tag)}_{next(_counter)}"
    _ensure_package("_pysonic_python_models", None)
    _ensure_package(package, version_dir)
    name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot import {path}"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        forget_module(package)
        raise
    return module, package


def forget_module(package: str) -> None:
    """Drop a model's private package and everything imported under it."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _ensure_package(name: str, directory: Path | None) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = [str(directory)] if directory is not None else []
    module.__package__ = name
    sys.modules[name] = module


def _identifier(tag: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in tag) or "model"


@contextlib.contextmanager
def calling(
    model_name: str, model_dir: Path, bls: Callable[..., Any] | None = None
) -> Iterator[None]:
    """Tell pb_utils whose code runs on this thread (``get_model_dir``, Logger prefixes) and
    how its BLS requests reach the server."""
    current = pb_utils._current
    previous = (
        getattr(current, "model_name", None),
        getattr(current, "model_dir", None),
        getattr(current, "bls", None),
    )
    current.model_name, current.model_dir, current.bls = model_name, str(model_dir), bls
    try:
        yield
    finally:
        current.model_name, current.model_dir, current.bls = previous
