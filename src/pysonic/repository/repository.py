"""The model repository on disk: Triton's layout, one directory per model.

::

    <root>/<model>/config.pbtxt          (optional unless strict)
    <root>/<model>/<version>/model.onnx  (or default_model_filename / the backend's default)

:class:`ModelRepository` lists and loads models; :func:`load_model_config` is the one path from
a model directory to a complete, validated ``ModelConfig`` (parse -> auto-complete -> normalize
-> validate), so the server, the CLI and the tests see the same config Triton would serve.

Example::

    repo = ModelRepository(Path("model_repository"))
    repo.model_names()                  # ['particlenet', 'particlenet_lite']
    model = repo.load("particlenet")    # ModelDefinition(name=..., config=..., versions={1: ...})
    repo.load("particlenet_lit")        # NotFoundError: ... did you mean 'particlenet_lite'?
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from tritonclient.grpc.model_config_pb2 import ModelConfig

from pysonic.errors import ModelConfigError, NotFoundError
from pysonic.repository.autocomplete import complete_backend_fields, complete_io
from pysonic.repository.config import normalize_config, parse_model_config, validate_config
from pysonic.repository.versions import list_versions, model_file_path, select_versions

__all__ = ["CONFIG_FILENAME", "ModelDefinition", "ModelRepository", "load_model_config"]

CONFIG_FILENAME = "config.pbtxt"


@dataclass
class ModelDefinition:
    """A loadable model: its complete config and the version directories to serve.

    ``versions`` maps each version chosen by the version policy to its directory; the model
    file inside is ``model_file_path(config, versions[v])``.
    """

    name: str
    config: ModelConfig = field(repr=False)
    path: Path
    versions: dict[int, Path]

    def model_file(self, version: int | None = None) -> Path:
        """The model file of ``version`` (default: the newest version served)."""
        return model_file_path(
            self.config, self.versions[max(self.versions) if version is None else version]
        )


def load_model_config(
    model_dir: Path, *, strict: bool = False, override: ModelConfig | None = None
) -> ModelConfig:
    """Parse, auto-complete, normalize and validate the config of the model in ``model_dir``.

    ``strict=True`` is the server's ``--strict-model-config``: config.pbtxt must exist and
    list inputs and outputs; only what Triton fills even then (name, backend/platform, defaults
    such as the version policy and instance group) is filled. Otherwise a missing config.pbtxt,
    or missing inputs/outputs, are read from the ONNX graph of the latest version.
    ``override`` is used instead of config.pbtxt (a load request's ``config``), completed and
    validated the same way.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        msg = f"{model_dir}: model directory not found"
        raise ModelConfigError(msg)
    path = model_dir / CONFIG_FILENAME
    source = str(path)
    if override is not None:
        config = ModelConfig()
        config.CopyFrom(override)
        source = f"model '{model_dir.name}' (config override)"
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            msg = f"{source}: cannot read: {err}"
            raise ModelConfigError(msg) from err
        config = parse_model_config(text, source)
    elif strict:
        msg = (
            f"{source}: not found; strict model config (--strict-model-config) needs a "
            f"config.pbtxt for model '{model_dir.name}'"
        )
        raise ModelConfigError(msg)
    else:
        config = ModelConfig()
        source = f"{model_dir} (no {CONFIG_FILENAME}, auto-completed)"
    complete_backend_fields(config, model_dir, source)
    if config.backend == "python" and not strict:
        from pysonic.backends.python.autocomplete import complete_python_config

        complete_python_config(config, _latest_model_file(config, model_dir, source), source)
    if not (config.input and config.output):
        if strict:
            _raise_missing_io(config, source, "auto-complete is off (--strict-model-config)")
        if config.backend != "onnxruntime":
            why = "auto-complete reads only ONNX graphs and Python models' auto_complete_config"
            _raise_missing_io(config, source, why)
        complete_io(config, _latest_model_file(config, model_dir, source), source)
    normalize_config(config)
    validate_config(config, source)
    return config


def _raise_missing_io(config: ModelConfig, source: str, why: str) -> NoReturn:
    pairs = (("input", config.input), ("output", config.output))
    missing = " and ".join(kind for kind, ios in pairs if not ios)
    msg = f"{source}: model '{config.name}' lists no {missing}, and {why}; write them out"
    raise ModelConfigError(msg)


def _latest_model_file(config: ModelConfig, model_dir: Path, source: str) -> Path:
    versions = list_versions(model_dir)
    if not versions:
        msg = f"{source}: no version directory (e.g. {model_dir / '1'}) to auto-complete from"
        raise ModelConfigError(msg)
    path = model_file_path(config, versions[max(versions)])
    if not path.exists():
        msg = f"{path}: not found; auto-complete reads the model file of the latest version"
        raise ModelConfigError(msg)
    return path


class ModelRepository:
    """A directory of models in Triton's layout.

    Each call to :meth:`load` reads the disk again, so a reload sees edits. Hidden entries
    (``.git``, ``.ipynb_checkpoints``) and plain files in the root are not models.

    Example::

        repo = ModelRepository("model_repository", strict=True)
        for name in repo.model_names():
            definition = repo.load(name)
    """

    def __init__(self, root: Path | str, *, strict: bool = False) -> None:
        self._root = Path(root)
        if not self._root.is_dir():
            msg = f"model repository {self._root} is not a directory"
            raise ModelConfigError(msg)
        self.strict = strict

    @property
    def root(self) -> Path:
        """The repository directory."""
        return self._root

    def __repr__(self) -> str:
        return f"ModelRepository({str(self._root)!r}, strict={self.strict})"

    def model_names(self) -> list[str]:
        """Names of the model directories in the root, sorted."""
        return sorted(
            child.name
            for child in self._root.iterdir()
            if child.is_dir() and not child.name.startswith(".")
        )

    def load(self, name: str, *, config: ModelConfig | None = None) -> ModelDefinition:
        """Read model ``name``: complete config and the versions its policy serves.

        ``config`` overrides the model's config.pbtxt (see :func:`load_model_config`).

        Raises NotFoundError for an unknown name (listing the models, with a suggestion) and
        ModelConfigError for anything wrong on disk.
        """
        names = self.model_names()
        if name not in names:
            raise NotFoundError(_unknown_model_message(name, names, self._root))
        model_dir = self._root / name
        config = load_model_config(model_dir, strict=self.strict, override=config)
        on_disk = list_versions(model_dir)
        versions = {v: on_disk[v] for v in select_versions(config, model_dir)}
        if config.default_model_filename:
            for version, version_dir in versions.items():
                model_file = model_file_path(config, version_dir)
                if not model_file.exists():
                    msg = f"{model_file}: not found (model '{name}' version {version})"
                    raise ModelConfigError(msg)
        return ModelDefinition(name=name, config=config, path=model_dir, versions=versions)


def _unknown_model_message(name: str, names: list[str], root: Path) -> str:
    if not names:
        return f"unknown model '{name}': the repository {root} holds no models"
    msg = f"unknown model '{name}' (available: {', '.join(names)})"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        msg += f"; did you mean '{close[0]}'?"
    return msg
