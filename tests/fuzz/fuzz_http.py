"""atheris fuzz harness: the HTTP request path, from the ASGI request to the response.

Each input drives pysonic's real :class:`~pysonic.server.http.HttpApp` (routing, the
``Inference-Header-Content-Length`` header, body reading with size limits and gzip / deflate,
the JSON + binary tensor decoder, shared-memory parameters, validation against the model's
config, the batcher, the ONNX Runtime backend, the response encoder). Input layout::

    byte 0      route (an /infer of one of the models, or another endpoint)
    byte 1      flags: 1 send Inference-Header-Content-Length, 2 gzip the body,
                4 say "gzip" without compressing, 8 send the body in 3 chunks,
                16 an unparsable header length, 32 say "deflate" and compress
    bytes 2-3   the header length (little endian)
    rest        the body

Every input must be answered with a status below 500: a 500 means an unexpected exception
reached the app's last-resort handler (a bug), and is raised here as a crash.

Run: ``python tests/fuzz/fuzz_http.py -max_total_time=20 [corpus_dir]``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["pysonic"]):
    from pysonic.protocol.http_codec import dump_json
    from pysonic.server.http import HttpApp
    from pysonic.server.state import ServerState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MODELS, REGION, seed_arrays, start_core

ROUTES: list[tuple[str, str]] = [
    *(("POST", f"/v2/models/{m}/infer") for m in MODELS),
    ("POST", "/v2/models/dense/versions/1/infer"),
    ("POST", "/v2/models/dense/versions/7/infer"),
    ("GET", "/v2/models/dense/config"),
    ("GET", "/v2/models/stats"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/systemsharedmemory/region/r2/register"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/models/nonexistent/infer"),
]
MAX_BODY = 1 << 20


class _Failures(logging.Handler):
    """Collects what the app logs with a traceback (its last-resort handler)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


FAILURES = _Failures()
logging.getLogger("pysonic").addHandler(FAILURES)
fuzzed = start_core(Path(tempfile.mkdtemp(prefix="pysonic-fuzz-http-")))
state = ServerState(model_control_mode="none")
state.ready = True
app = HttpApp(fuzzed.core, state, max_body_bytes=MAX_BODY)


async def _call(method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        # like uvicorn: once the body is read, receive() waits until the client goes away (the
        # app watches it to drop queued work of clients that disconnect); this one never does
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await app(scope, receive, send)
    return sent


def request_of(data: bytes) -> tuple[str, str, list[tuple[bytes, bytes]], list[bytes]]:
    route = ROUTES[data[0] % len(ROUTES)] if data else ROUTES[0]
    flags = data[1] if len(data) > 1 else 0
    (header_length,) = struct.unpack("<H", data[2:4].ljust(2, b"\0")[:2]) if len(data) > 2 else (0,)
    body = data[4:]
    headers = [(b"content-type", b"application/octet-stream")]
    if flags & 16:
        headers.append((b"inference-header-content-length", body[:3] or b"x"))
    elif flags & 1:
        headers.append((b"inference-header-content-length", b"%d" % header_length))
    if flags & 2:
        body = zlib.compress(body, wbits=31)[:None]
        headers.append((b"content-encoding", b"gzip"))
    elif flags & 32:
        body = zlib.compress(body)
        headers.append((b"content-encoding", b"deflate"))
    elif flags & 4:
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", b"%d" % len(body)))
    if flags & 8 and len(body) >= 3:
        third = len(body) // 3
        chunks = [body[:third], body[third : 2 * third], body[2 * third :]]
    else:
        chunks = [body]
    return route[0], route[1], headers, chunks


def test_one_input(data: bytes) -> None:
    method, path, headers, chunks = request_of(data)
    FAILURES.records.clear()
    sent = fuzzed.run(_call(method, path, headers, chunks))
    fuzzed.reset_shared_memory()
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if len(starts) != 1:
        msg = f"{path}: {len(starts)} response starts"
        raise RuntimeError(msg)
    status = starts[0]["status"]
    if status >= 500 and status != 501 and status != 503:
        detail = FAILURES.records[0].exc_info if FAILURES.records else None
        if detail and detail[1] is not None:
            raise detail[1]
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        msg = f"{method} {path}: status {status}: {bytes(body)[:500]!r}"
        raise RuntimeError(msg)


def seeds() -> list[bytes]:
    """Valid requests (JSON and binary, for each model, plus shared memory and endpoints)."""
    import tritonclient.http as httpclient

    out = []
    index = {path: i for i, (_, path) in enumerate(ROUTES)}
    for model, arrays in seed_arrays():
        route = index[f"/v2/models/{model}/infer"]
        for binary in (False, True):
            if not binary and arrays[0][0].datatype in ("FP16", "BF16"):
                continue
            inputs = []
            for spec, arr in arrays:
                inp = httpclient.InferInput(spec.name, list(spec.shape), spec.datatype)
                inp.set_data_from_numpy(arr, binary_data=binary)
                inputs.append(inp)
            body, length = httpclient.InferenceServerClient.generate_request_body(inputs)
            flags = 1 if length is not None else 0
            out.append(bytes([route, flags]) + struct.pack("<H", length or 0) + body)
    for model, datatype in (("identity_fp16", "FP16"), ("identity_bf16", "BF16")):
        header = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": [1, 3]}]}
        header["inputs"][0]["data"] = [1.5, -2, 30000]  # pysonic takes FP16 / BF16 JSON numbers
        route = index[f"/v2/models/{model}/infer"]
        out.append(bytes([route, 0, 0, 0]) + dump_json(header))
    shm_input = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 16],
                "parameters": {"shared_memory_region": REGION, "shared_memory_byte_size": 128},
            }
        ],
        "outputs": [
            {
                "name": "probs",
                "parameters": {
                    "shared_memory_region": REGION,
                    "shared_memory_byte_size": 32,
                    "shared_memory_offset": 1024,
                },
            }
        ],
    }
    out.append(bytes([index["/v2/models/dense/infer"], 0, 0, 0]) + dump_json(shm_input))
    register = {"key": "/pysonic_fuzz_x", "offset": 0, "byte_size": 64}
    out.append(
        bytes([index["/v2/systemsharedmemory/region/r2/register"], 0, 0, 0]) + dump_json(register)
    )
    out.append(bytes([index["/v2/repository/index"], 2, 0, 0]) + b'{"ready": true}')
    return out


def main() -> None:
    args = list(sys.argv)
    corpus = [a for a in args[1:] if not a.startswith("-")]
    for directory in corpus:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (path / f"seed-{i:03d}").write_bytes(seed)
    for seed in seeds():  # the seeds themselves must pass
        test_one_input(seed)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
