"""The model repository on disk, Triton-compatible: layout, config.pbtxt, auto-complete, versions.

A repository is ``<root>/<model>/config.pbtxt`` plus ``<root>/<model>/<version>/model.onnx``.
``config.pbtxt`` is parsed into tritonclient's ``ModelConfig`` proto; what it leaves out is
auto-completed from the ONNX graph (unless ``strict``), then validated, so errors name the file
and what to fix before any backend is started.

Example::

    from pysonic.repository import ModelRepository, config_to_text

    repo = ModelRepository("model_repository")
    model = repo.load("particlenet")
    print(config_to_text(model.config))   # the config the server will serve
    sorted(model.versions)                # [1]
"""

from __future__ import annotations

from pysonic.repository.autocomplete import DEFAULT_MAX_BATCH_SIZE
from pysonic.repository.config import (
    config_to_text,
    normalize_config,
    parse_model_config,
    validate_config,
)
from pysonic.repository.repository import (
    CONFIG_FILENAME,
    ModelDefinition,
    ModelRepository,
    load_model_config,
)
from pysonic.repository.versions import (
    DEFAULT_MODEL_FILENAMES,
    list_versions,
    model_file_path,
    select_versions,
)

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MODEL_FILENAMES",
    "ModelDefinition",
    "ModelRepository",
    "config_to_text",
    "list_versions",
    "load_model_config",
    "model_file_path",
    "normalize_config",
    "parse_model_config",
    "select_versions",
    "validate_config",
]
