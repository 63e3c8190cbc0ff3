"""atheris fuzz harness: the gRPC ModelInfer path, from wire bytes to the response bytes.

Each input is a ``ModelInferRequest`` as it arrives on the wire; inputs protobuf cannot parse
are grpc's to refuse (the servicer never sees them). The rest go through what the servicer
does: :func:`pysonic.protocol.grpc_codec.decode_infer_request` (raw and typed contents, BYTES,
shared-memory parameters against a registered region), :meth:`InferenceCore.infer`
(validation against the model's config, the batcher, the ONNX Runtime backend, outputs to shared
memory) and :func:`encode_infer_response`. Every failure must be a ``PysonicError`` other than
INTERNAL (which gRPC reports as a clear status); anything else is a crash.

Run: ``python tests/fuzz/fuzz_grpc.py -max_total_time=20 [corpus_dir]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["pysonic"]):
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    from pysonic.errors import InternalError, PysonicError
    from pysonic.protocol.grpc_codec import (
        decode_infer_request,
        encode_infer_request,
        encode_infer_response,
    )
    from pysonic.protocol.types import InferRequest, InferTensor, RequestedOutput
    from pysonic.server.core import InferenceCore  # noqa: F401 - instruments the core path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REGION, seed_arrays, start_core

fuzzed = start_core(Path(tempfile.mkdtemp(prefix="pysonic-fuzz-grpc-")))


async def _infer(msg: service_pb2.ModelInferRequest) -> bytes:
    request = decode_infer_request(msg, fuzzed.core.shared_memory)
    return encode_infer_response(await fuzzed.core.infer(request))


def test_one_input(data: bytes) -> None:
    try:
        msg = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError:
        return  # grpc's deserializer refuses it before pysonic is called
    try:
        fuzzed.run(_infer(msg))
    except InternalError:
        raise
    except PysonicError:
        return
    finally:
        fuzzed.reset_shared_memory()


def seeds() -> list[bytes]:
    """Valid requests: raw contents for every model, typed contents, and shared memory."""
    out = []
    for model, arrays in seed_arrays():
        tensors = [InferTensor(s.name, s.datatype, s.shape, a) for s, a in arrays]
        out.append(encode_infer_request(InferRequest(model, tensors, id="seed")))
        msg = service_pb2.ModelInferRequest(model_name=model)
        typed = {"FP32": "fp32_contents", "INT32": "int_contents", "BOOL": "bool_contents"}
        if all(s.datatype in typed for s, _ in arrays):
            for s, a in arrays:
                t = msg.inputs.add(name=s.name, datatype=s.datatype, shape=s.shape)
                getattr(t.contents, typed[s.datatype]).extend(a.reshape(-1).tolist())
            out.append(msg.SerializeToString())
    shm = service_pb2.ModelInferRequest(model_name="dense", id="shm")
    t = shm.inputs.add(name="x", datatype="FP32", shape=[2, 16])
    t.parameters["shared_memory_region"].string_param = REGION
    t.parameters["shared_memory_byte_size"].int64_param = 128
    o = shm.outputs.add(name="probs")
    o.parameters["shared_memory_region"].string_param = REGION
    o.parameters["shared_memory_byte_size"].int64_param = 32
    o.parameters["shared_memory_offset"].int64_param = 2048
    out.append(shm.SerializeToString())
    prio = InferRequest(
        "dense",
        [InferTensor(s.name, s.datatype, s.shape, a) for s, a in next(seed_arrays())[1]],
        outputs=[RequestedOutput("logits")],
        parameters={"priority": 1, "timeout": 100000},
    )
    out.append(encode_infer_request(prio))
    return out


def main() -> None:
    args = list(sys.argv)
    for directory in (a for a in args[1:] if not a.startswith("-")):
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (path / f"seed-{i:03d}").write_bytes(seed)
    for seed in seeds():  # the seeds themselves must be answered
        test_one_input(seed)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
