"""What both fuzz harnesses share: a real in-process core over a repository of small ONNX models
(every datatype family, batching and not, reshape, variable dims), a registered shared-memory
region, and valid requests to seed the corpus with.

The harnesses import pysonic inside ``atheris.instrument_imports()`` first, then this module.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's builders

from conftest import build_repository
from pysonic.protocol.shm import SharedMemoryRegistry
from pysonic.repository import ModelRepository
from pysonic.server.core import InferenceCore

__all__ = ["MODELS", "REGION", "Fuzzed", "start_core"]

#: name of the shared-memory region every harness run registers (4 KiB)
REGION = "fz"
SHM_PREFIX = "pysonic_fuzz_"


@dataclass(frozen=True)
class ModelInput:
    name: str
    datatype: str
    shape: tuple[int, ...]


#: model -> its inputs (with a batch of 2 where the model batches)
MODELS: dict[str, list[ModelInput]] = {
    "dense": [ModelInput("x", "FP32", (2, 16))],
    "add_sub": [ModelInput("INPUT0", "FP32", (2, 16)), ModelInput("INPUT1", "FP32", (2, 16))],
    "identity_bytes": [ModelInput("INPUT0", "BYTES", (2, 2))],
    "identity_fp16": [ModelInput("INPUT0", "FP16", (1, 3))],
    "identity_bf16": [ModelInput("INPUT0", "BF16", (1, 3))],
    "identity_bool": [ModelInput("INPUT0", "BOOL", (2, 3))],
    "identity_int8": [ModelInput("INPUT0", "INT8", (1, 3))],
    "nobatch": [ModelInput("INPUT0", "INT32", (2, 3))],
    "variable": [ModelInput("INPUT0", "FP32", (2, 5))],
    "reshaped": [ModelInput("INPUT0", "FP32", (1, 4))],
}


def sample(inp: ModelInput, rng: np.random.Generator) -> np.ndarray:
    if inp.datatype == "BYTES":
        items = [b"ab", b"", b"\xc3\xa9", b"xyz"][: int(np.prod(inp.shape))]
        return np.array(items, dtype=object).reshape(inp.shape)
    if inp.datatype == "BOOL":
        return rng.integers(0, 2, inp.shape).astype(bool)
    from pysonic.protocol.datatypes import to_numpy_dtype

    dtype = to_numpy_dtype(inp.datatype)
    return rng.integers(-3, 4, inp.shape).astype(np.float32).astype(dtype)


@dataclass
class Fuzzed:
    """A started core on its own event loop (run each input with :meth:`run`)."""

    core: InferenceCore
    loop: asyncio.AbstractEventLoop
    shm_key: str

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def reset_shared_memory(self) -> None:
        """Unregister what an input registered; keep the harness's own region."""
        registry = self.core.shared_memory
        for status in registry.status():
            if status.name != REGION:
                registry.unregister(status.name)


def start_core(workdir: Path) -> Fuzzed:
    # as in the test suite: a numpy RuntimeWarning (overflow in a cast, ...) is a finding
    warnings.simplefilter("error")
    repo = workdir / "repo"
    if not repo.exists():  # the test suite's repository; only MODELS are loaded
        build_repository(repo)
    key = f"/{SHM_PREFIX}{os.getpid()}"
    shm_file = Path("/dev/shm") / key.lstrip("/")
    shm_file.write_bytes(bytes(range(256)) * 16)
    atexit.register(shm_file.unlink, missing_ok=True)
    registry = SharedMemoryRegistry(max_total_bytes=1 << 20, allowed_key_prefixes=[SHM_PREFIX])
    registry.register(REGION, key, 0, 4096)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    core = InferenceCore(ModelRepository(repo), shared_memory=registry, drain_timeout=5)
    failed = loop.run_until_complete(core.start(list(MODELS)))
    if failed:
        msg = f"fuzz repository: models failed to load: {failed}"
        raise RuntimeError(msg)
    return Fuzzed(core, loop, key)


def seed_arrays(seed: int = 0) -> Iterator[tuple[str, list[tuple[ModelInput, np.ndarray]]]]:
    rng = np.random.default_rng(seed)
    for model, inputs in MODELS.items():
        yield model, [(i, sample(i, rng)) for i in inputs]
