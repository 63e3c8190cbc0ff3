"""A minimal onnxruntime runtime for MLServer: ``OrtRuntime`` (an ``MLModel``).

MLServer ships no ONNX runtime, so this is the smallest fair one: the model-settings'
``parameters.uri`` names the ``.onnx`` file and ``parameters.extra`` holds ``instances`` and
``intra_op_threads`` (from the Triton config). ``instances`` sessions are created, and
``predict`` runs one of them on a thread pool of that size, so up to ``instances`` (adaptively
batched) requests compute at once, as Triton's model instances do, and the event loop stays free
while ORT computes.

Tensors: MLServer's gRPC front-end has already unpacked ``raw_input_contents`` into Python lists
(``mlserver/raw.py``: ``struct.unpack`` -> ``list``) before a runtime sees the request, and packs
the outputs back from lists (``struct.pack(*data)``), so lists cannot be avoided here; the runtime
uses MLServer's own NumPy codec (``np.array(list)`` in, ``ndarray.tolist()`` out), the documented
way. It runs in MLServer's environment (it imports nothing from pysonic).
"""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OrtRuntime(MLModel):
    """``instances`` onnxruntime sessions behind MLServer's data plane."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = (params.extra if params else None) or {}
        instances = int(extra.get("instances", 1))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        uri = params.uri if params else None
        self._sessions: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for _ in range(instances):
            self._sessions.put(
                ort.InferenceSession(str(uri), opts, providers=["CPUExecutionProvider"])
            )
        self._pool = ThreadPoolExecutor(instances, thread_name_prefix=f"ort-{self.name}")
        return True

    def _run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        session = self._sessions.get()
        try:
            names = [o.name for o in session.get_outputs()]
            return list(zip(names, session.run(names, feeds), strict=True))
        finally:
            self._sessions.put(session)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in outputs],
        )

    async def unload(self) -> bool:
        self._pool.shutdown(wait=False)
        return True
