"""Model versions on disk and which of them a ``version_policy`` serves, like Triton.

A model directory holds one sub-directory per version, named by a positive integer without
leading zeros (``1``, ``2``, ``10``); anything else (``0``, ``01``, ``latest``, ``.git``) is not a
version and is ignored, as in Triton. Each version directory holds the model file, named by
``default_model_filename`` or the backend's default (:data:`DEFAULT_MODEL_FILENAMES`).

Example::

    >>> list_versions(Path("repo/jets"))           # repo/jets/{1,2,3,notes}
    {1: PosixPath('repo/jets/1'), 2: PosixPath('repo/jets/2'), 3: PosixPath('repo/jets/3')}
    >>> select_versions(config, Path("repo/jets"))  # version_policy { latest { num_versions: 2 } }
    [2, 3]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysonic.errors import ModelConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from tritonclient.grpc.model_config_pb2 import ModelConfig

__all__ = ["DEFAULT_MODEL_FILENAMES", "list_versions", "model_file_path", "select_versions"]

#: backend -> the model file Triton looks for in a version directory when config.pbtxt has no
#: ``default_model_filename``.
DEFAULT_MODEL_FILENAMES: dict[str, str] = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "python": "model.py",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}


def list_versions(model_dir: Path) -> dict[int, Path]:
    """Version number -> version directory, for every valid version directory, ascending."""
    found: dict[int, Path] = {}
    if not model_dir.is_dir():
        return found
    for child in model_dir.iterdir():
        name = child.name
        if child.is_dir() and name.isdigit() and name.isascii() and not name.startswith("0"):
            found[int(name)] = child
    return dict(sorted(found.items()))


def select_versions(config: ModelConfig, model_dir: Path) -> list[int]:
    """The versions ``config.version_policy`` serves from ``model_dir``, ascending.

    ``latest { num_versions: N }`` (the default, N=1) takes the N highest; ``all {}`` takes
    every version; ``specific { versions: [...] }`` takes exactly those and raises
    ModelConfigError naming any that is missing on disk. Serving nothing is an error too.
    """
    available = sorted(list_versions(model_dir))
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        chosen = available
    elif which == "specific":
        wanted = sorted(set(policy.specific.versions))
        missing = [v for v in wanted if v not in available]
        if missing:
            names = ", ".join(str(v) for v in missing)
            msg = (
                f"model '{model_dir.name}': version_policy asks for version(s) {names}, "
                f"not found in {model_dir} (available: {_listing(available)})"
            )
            raise ModelConfigError(msg)
        chosen = wanted
    else:
        count = policy.latest.num_versions if which == "latest" else 1
        chosen = available[-count:] if count > 0 else []
    if not chosen:
        msg = (
            f"model '{model_dir.name}': no version to serve in {model_dir} (version directories "
            "are positive integers, e.g. 1/)"
        )
        raise ModelConfigError(msg)
    return chosen


def model_file_path(config: ModelConfig, version_dir: Path) -> Path:
    """Path of the model file in ``version_dir``: ``default_model_filename`` or the backend's.

    The file may not exist; callers that need it check (and name the path in their error).
    """
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAMES.get(config.backend)
    if not filename:
        msg = (
            f"model '{config.name}': backend '{config.backend}' has no default model file name; "
            "set 'default_model_filename' in config.pbtxt"
        )
        raise ModelConfigError(msg)
    return version_dir / filename


def _listing(versions: list[int]) -> str:
    return ", ".join(str(v) for v in versions) or "none"
