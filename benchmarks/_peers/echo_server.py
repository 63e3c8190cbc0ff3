"""The bare grpc.aio floor: Triton's ModelInfer answered by echoing the inputs, nothing else.

No model, no batching, no queue: a request's inputs come back as its outputs (metadata copied,
``raw_output_contents = raw_input_contents``), so what a client measures against it is the cost
of gRPC + protobuf + the asyncio loop in Python, the least any Python server of this protocol can
spend. ServerLive, ServerReady and ModelReady answer true; every other RPC is UNIMPLEMENTED.
The server has pysonic's socket options (``grpc.so_reuseport`` 0) and runs on the default asyncio
loop, or on uvloop with ``--uvloop``.

``--hop MODEL.onnx`` is the floor of any server that keeps compute off the event loop: each
request is handed to one worker thread (``queue.SimpleQueue``), which runs the ONNX model on the
request's first input with onnxruntime (1 thread) and hands the result back with
``loop.call_soon_threadsafe``, the least a thread hop plus a runtime call can cost.

    python benchmarks/_peers/echo_server.py [--port 0] [--uvloop] [--hop MODEL.onnx]

It prints ``READY port=N`` once it listens, and runs until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import signal
import threading
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """ModelInfer echoes; the health RPCs say yes."""

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        for tensor in request.inputs:
            out = response.outputs.add()
            out.name = tensor.name
            out.datatype = tensor.datatype
            out.shape.extend(tensor.shape)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


class HopServicer(EchoServicer):
    """Echo, after a round trip through a worker thread that runs the model on the input."""

    def __init__(self, model: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.jobs: queue.SimpleQueue[tuple[Any, Any, asyncio.Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self.worker, daemon=True).start()

    def worker(self) -> None:
        while True:
            loop, request, future = self.jobs.get()
            t = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(t.shape))
            out = self.session.run(None, {self.input: x})[0]
            loop.call_soon_threadsafe(future.set_result, out)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((loop, request, future))
        await future
        return await super().ModelInfer(request, context)


async def serve(port: int, hop: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = HopServicer(hop) if hop else EchoServicer()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY port={bound}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop, not asyncio's loop")
    ap.add_argument("--hop", metavar="MODEL.onnx", help="run MODEL on a worker thread per request")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.port, args.hop))
    else:
        asyncio.run(serve(args.port, args.hop))


if __name__ == "__main__":
    main()
