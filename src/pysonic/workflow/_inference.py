"""Where an ML module's inference runs: in-process, or through SONIC in one of its three modes.

The module's code never changes (SONIC's portability promise): it calls
``backend.submit(inputs)`` and gets a ``concurrent.futures.Future`` of the outputs either way.

* ``direct``: an in-process onnxruntime session; the call runs on the framework thread that asks
  (as CMSSW runs a local ONNX producer) and the Future is already done when ``submit`` returns.
* ``sonic-sync``: the SONIC client blocks the framework thread until the server answers.
* ``sonic-async``: the request is sent and ``submit`` returns at once; the Future completes on the
  client's loop thread, which is what lets the thread serve other events meanwhile.
* ``sonic-pseudoasync``: the blocking call runs on a client worker thread.

Example::

    backend = DirectInference(Path("model_repository/particlenet_lite"))
    probs = backend.submit(inputs).result()["softmax"]
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "INFERENCE_MODES",
    "DirectInference",
    "InferenceBackend",
    "InferenceMode",
    "SonicInference",
]

InferenceMode = Literal["direct", "sonic-sync", "sonic-async", "sonic-pseudoasync"]
INFERENCE_MODES: tuple[str, ...] = ("direct", "sonic-sync", "sonic-async", "sonic-pseudoasync")
Outputs = dict[str, np.ndarray]


class InferenceBackend(Protocol):
    """What an ML module sees: submit inputs, get a Future of the outputs."""

    mode: str

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]: ...

    def close(self) -> None: ...


class DirectInference:
    """In-process onnxruntime on the calling thread (``intra_op_threads`` per call)."""

    mode = "direct"

    def __init__(self, model_dir: Path, *, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        from pysonic.repository import ModelRepository

        model_dir = Path(model_dir)
        self.path = ModelRepository(model_dir.parent).load(model_dir.name).model_file()
        self._session = ort.InferenceSession(
            str(self.path), opts, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]:
        future: concurrent.futures.Future[Outputs] = concurrent.futures.Future()
        try:
            values = self._session.run(self._outputs, dict(inputs))
            future.set_result(dict(zip(self._outputs, values, strict=True)))
        except Exception as err:  # noqa: BLE001 - handed to the module through the Future
            future.set_exception(err)
        return future

    def close(self) -> None:
        """Nothing to release (the session goes with the object)."""


class SonicInference:
    """Through a :class:`pysonic.client.SonicClient`, in ``sync``, ``async`` or ``pseudoasync``."""

    def __init__(self, client: Any, mode: str) -> None:
        if mode not in ("sonic-sync", "sonic-async", "sonic-pseudoasync"):
            msg = f"unknown SONIC mode '{mode}' (known: {', '.join(INFERENCE_MODES[1:])})"
            raise ValueError(msg)
        self.mode = mode
        self.client = client
        self._client_mode = mode.removeprefix("sonic-")

    def submit(self, inputs: Mapping[str, np.ndarray]) -> concurrent.futures.Future[Outputs]:
        return self.client.submit(inputs, self._client_mode)

    def close(self) -> None:
        self.client.close()
