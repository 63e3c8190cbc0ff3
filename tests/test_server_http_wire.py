"""The HTTP frontend on the raw wire: malformed requests, limits, compression, keep-alive, drain.

Requests are written with the standard library (``http.client``, sockets) so that every
malformation reaches the server exactly as sent. Each bad request must get its 4xx/5xx status
with Triton's ``{"error": "..."}`` body, and the server must go on serving.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import json
import socket
import time
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from conftest import build_repository
from pysonic.server import EmbeddedServer, ServerOptions, ServerProcess

pytestmark = pytest.mark.timeout(120)

LIMIT = 4 * 1024 * 1024  # the http_server fixture's --http-max-body-bytes


def _connect(server: EmbeddedServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)


def _call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp, resp.read()


def _infer_body(
    inputs: list[dict[str, Any]], binary: list[bytes] = (), **extra: Any
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    headers = {"Content-Type": "application/octet-stream"} if binary else {}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return header + b"".join(binary), headers


def _x(rows: int = 1) -> np.ndarray:
    return np.arange(16 * rows, dtype=np.float32).reshape(rows, 16)


def _binary_x(rows: int = 1, size: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = _x(rows).tobytes()
    t = {
        "name": "x",
        "datatype": "FP32",
        "shape": [rows, 16],
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    return _infer_body([t], [raw], parameters={"binary_data_output": True})


def _assert_serving(conn: http.client.HTTPConnection) -> None:
    body, headers = _binary_x()
    status, resp, data = _call(conn, "POST", "/v2/models/dense/infer", body, headers)
    assert status == 200, data
    n = int(resp.getheader("Inference-Header-Content-Length"))
    assert json.loads(data[:n])["outputs"][0]["name"] == "probs"


@pytest.fixture
def conn(http_server: EmbeddedServer):
    c = _connect(http_server)
    yield c
    c.close()


# ---------------------------------------------------------------- malformed requests
def _json_input(data: Any, datatype: str = "FP32", shape: list | None = None) -> dict:
    return {"name": "x", "datatype": datatype, "shape": shape or [1, 16], "data": data}


_BAD_REQUESTS = [
    ("not json", b"{inputs: [", {}, 400, "malformed JSON in the inference request header"),
    ("not an object", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no inputs", b"{}", {}, 400, "request: missing 'inputs'"),
    (
        "header length not a number",
        b"{}",
        {"Inference-Header-Content-Length": "ten"},
        400,
        "unable to parse Inference-Header-Content-Length",
    ),
    (
        "header length past the body",
        b"{}",
        {"Inference-Header-Content-Length": "200"},
        400,
        "Inference-Header-Content-Length 200 is outside the body's 2 bytes",
    ),
    (
        "negative header length",
        b"{}",
        {"Inference-Header-Content-Length": "-1"},
        400,
        "must not be negative",
    ),
    (
        "shape and data disagree",
        _infer_body([_json_input(list(range(15)))])[0],
        {},
        400,
        "'data' holds 15 elements, expected 16 for shape [1, 16]",
    ),
    (
        "ragged data",
        _infer_body([_json_input([[1, 2], [3]])])[0],
        {},
        400,
        "not a rectangular array",
    ),
    (
        "strings for FP32",
        _infer_body([_json_input(["a"] * 16)])[0],
        {},
        400,
        "'data' holds strings, not FP32 values",
    ),
    (
        "floats for INT8",
        _infer_body([_json_input([0.5] * 3, "INT8", [1, 3])])[0],
        {},
        400,
        "non-integer numbers, not INT8",
    ),
    (
        "INT8 out of range",
        _infer_body([_json_input([300, 0, 0], "INT8", [1, 3])])[0],
        {},
        400,
        "outside INT8's range",
    ),
    (
        "negative dimension",
        _infer_body([_json_input([1.0], shape=[-1, 16])])[0],
        {},
        400,
        "shape must be a list of non-negative integers",
    ),
    (
        "no data",
        _infer_body([{"name": "x", "datatype": "FP32", "shape": [1, 16]}])[0],
        {},
        400,
        "input 'x': no data",
    ),
    (
        "unknown datatype",
        _infer_body([_json_input([1.0] * 16, "FP99")])[0],
        {},
        400,
        "unknown datatype 'FP99'",
    ),
    (
        "unknown input",
        _infer_body([{**_json_input([1.0] * 16), "name": "y"}])[0],
        {},
        400,
        "unexpected inference input 'y'",
    ),
    (
        "wrong datatype for the model",
        _infer_body([_json_input([1] * 16, "INT64")])[0],
        {},
        400,
        "expected datatype FP32, got INT64",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [r[1:] for r in _BAD_REQUESTS],
    ids=[r[0] for r in _BAD_REQUESTS],
)
def test_malformed_requests(conn, body: bytes, headers: dict, status: int, fragment: str) -> None:
    got, resp, data = _call(conn, "POST", "/v2/models/dense/infer", body, headers)
    assert got == status, data
    assert resp.getheader("Content-Type") == "application/json"
    assert fragment in json.loads(data)["error"]
    _assert_serving(conn)  # the same keep-alive connection goes on


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        (65, "binary_data_size 65 runs past the end of the body"),
        (63, "raw data has 63 bytes, expected 64"),
        (-1, "binary_data_size must be a non-negative integer"),
        ("64", "binary_data_size must be a non-negative integer"),
    ],
)
def test_binary_size_mismatches(conn, size: Any, fragment: str) -> None:
    body, headers = _binary_x(size=size)
    status, _, data = _call(conn, "POST", "/v2/models/dense/infer", body, headers)
    assert status == 400
    assert fragment in json.loads(data)["error"]
    _assert_serving(conn)


def test_binary_bytes_left_over(conn) -> None:
    body, headers = _binary_x()
    status, _, data = _call(conn, "POST", "/v2/models/dense/infer", body + b"\0" * 8, headers)
    assert status == 400
    assert "72 bytes follow the JSON header, but the inputs' binary_data_size" in data.decode()


def test_malformed_binary_bytes_tensor(conn) -> None:
    raw = b"\x05\x00\x00\x00ab"  # declares 5 bytes, holds 2
    t = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 2]}
    body, headers = _infer_body([{**t, "parameters": {"binary_data_size": len(raw)}}], [raw])
    status, _, data = _call(conn, "POST", "/v2/models/identity_bytes/infer", body, headers)
    assert status == 400
    assert "malformed BYTES tensor" in json.loads(data)["error"]
    body, _ = _infer_body([{**t, "data": ["a", 7]}])
    status, _, data = _call(conn, "POST", "/v2/models/identity_bytes/infer", body)
    assert status == 400
    assert "BYTES 'data' must be a rectangular array of JSON strings" in json.loads(data)["error"]


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/v2/models/dnese/infer", 404, "did you mean 'dense'?"),
        ("/v2/models/dense/versions/4/infer", 404, "no ready version '4'"),
        ("/v2/models/dense/versions/x/infer", 404, "no ready version 'x'"),
        ("/v2/models/dense/predict", 404, "no endpoint /v2/models/dense/predict"),
        ("/v1/models/dense", 404, "KServe v2 endpoints are under /v2"),
    ],
)
def test_unknown_paths(conn, path: str, status: int, fragment: str) -> None:
    body, headers = _binary_x()
    got, _, data = _call(conn, "POST", path, body, headers)
    assert got == status
    assert fragment in json.loads(data)["error"]


def test_wrong_method_is_405(conn) -> None:
    status, resp, data = _call(conn, "GET", "/v2/models/dense/infer")
    assert status == 405
    assert resp.getheader("Allow") == "POST"
    assert "method GET is not allowed" in json.loads(data)["error"]
    status, _, _ = _call(conn, "POST", "/v2/health/ready", b"")
    assert status == 405


def test_health_endpoints(conn) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/dense/ready"):
        status, _, data = _call(conn, "GET", path)
        assert (status, data) == (200, b"")
    assert _call(conn, "GET", "/v2/models/dense/versions/7/ready")[0] == 400
    assert _call(conn, "GET", "/v2/models/nope/ready")[0] == 400


def test_json_bf16_and_fp16_are_accepted(conn) -> None:
    """Triton refuses FP16/BF16 in JSON; pysonic takes numbers and answers numbers."""
    for model, datatype in (("identity_bf16", "BF16"), ("identity_fp16", "FP16")):
        inp = {"name": "INPUT0", "datatype": datatype, "shape": [1, 3], "data": [1.0, -2.5, 3.0]}
        body, _ = _infer_body([inp])
        status, _, data = _call(conn, "POST", f"/v2/models/{model}/infer", body)
        assert status == 200, data
        assert json.loads(data)["outputs"][0]["data"] == [1.0, -2.5, 3.0]
    x = np.array([[1.0, -2.5, 3.140625]], dtype=ml_dtypes.bfloat16)
    raw = x.tobytes()
    inp = {"name": "INPUT0", "datatype": "BF16", "shape": [1, 3]}
    body, headers = _infer_body(
        [{**inp, "parameters": {"binary_data_size": 6}}],
        [raw],
        parameters={"binary_data_output": True},
    )
    status, resp, data = _call(conn, "POST", "/v2/models/identity_bf16/infer", body, headers)
    assert status == 200
    assert data[int(resp.getheader("Inference-Header-Content-Length")) :] == raw


# ---------------------------------------------------------------- size limits
def test_body_too_large_refused_before_reading(http_server: EmbeddedServer) -> None:
    """Content-Length past the limit: 400 from the headers alone, and the connection closes."""
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
        )
        data = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"connection: close" in head.lower()
    assert "over this server's limit of 4194304 bytes" in json.loads(body)["error"]
    c = _connect(http_server)
    _assert_serving(c)
    c.close()


def test_chunked_body_counted_against_the_limit(http_server: EmbeddedServer) -> None:
    c = _connect(http_server)
    body, headers = _binary_x()
    c.request("POST", "/v2/models/dense/infer", body=iter([body[:10], body[10:]]), headers=headers)
    resp = c.getresponse()
    assert resp.status == 200  # a chunked body (no Content-Length) is accepted
    resp.read()
    c.close()
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for size in (1 << 20, 1 << 20, 1 << 20, 1 << 20, 1):  # LIMIT + 1 bytes in all
            sock.sendall(b"%x\r\n%s\r\n" % (size, b"\0" * size))
        data = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "more than 4194304 bytes" in json.loads(answer)["error"]
    c = _connect(http_server)
    _assert_serving(c)
    c.close()


def test_gzip_bomb_is_stopped_at_the_limit(conn) -> None:
    bomb = gzip.compress(b"\0" * (LIMIT + 1024))
    assert len(bomb) < 10_000
    headers = {"Content-Encoding": "gzip"}
    status, _, data = _call(conn, "POST", "/v2/models/dense/infer", bomb, headers)
    assert status == 400
    assert "once decompressed" in json.loads(data)["error"]
    _assert_serving(conn)


@pytest.mark.parametrize(
    ("encoding", "body", "fragment"),
    [
        ("gzip", b"not gzip at all", "corrupt gzip request body"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-6], "truncated or corrupt gzip"),
        ("deflate", b"\x00\x01\x02", "deflate request body"),
        ("br", b"{}", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_compressed_bodies(conn, encoding: str, body: bytes, fragment: str) -> None:
    status, _, data = _call(
        conn, "POST", "/v2/models/dense/infer", body, {"Content-Encoding": encoding}
    )
    assert status == 400
    assert fragment in json.loads(data)["error"]
    _assert_serving(conn)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_request_and_response_on_the_wire(conn, encoding: str) -> None:
    body, headers = _binary_x(rows=4)
    if encoding == "gzip":
        packed = gzip.compress(body)
    elif encoding == "deflate":
        packed = zlib.compress(body)
    else:  # some clients send raw deflate (no zlib header); accepted too
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = c.compress(body) + c.flush()
    name = "deflate" if encoding == "raw-deflate" else encoding
    headers = {**headers, "Content-Encoding": name, "Accept-Encoding": f"{name}, identity;q=0.5"}
    status, resp, data = _call(conn, "POST", "/v2/models/dense/infer", packed, headers)
    assert status == 200
    assert resp.getheader("Content-Encoding") == name
    plain = gzip.decompress(data) if name == "gzip" else zlib.decompress(data)
    n = int(resp.getheader("Inference-Header-Content-Length"))
    outputs = json.loads(plain[:n])["outputs"]
    assert outputs[0]["shape"] == [4, 4]
    assert len(plain) == n + sum(o["parameters"]["binary_data_size"] for o in outputs)
    # not asked for, or identity preferred: no compression
    status, resp, _ = _call(
        conn,
        "POST",
        "/v2/models/dense/infer",
        body,
        {**headers, "Content-Encoding": "identity", "Accept-Encoding": "gzip;q=0.1, identity"},
    )
    assert status == 200
    assert resp.getheader("Content-Encoding") is None


# ---------------------------------------------------------------- connections
def test_keep_alive_many_requests_one_connection(http_server: EmbeddedServer) -> None:
    c = _connect(http_server)
    c.connect()
    sock = c.sock
    for _ in range(5):
        _assert_serving(c)
        status, _, data = _call(c, "GET", "/v2/models/dense")
        assert status == 200
        assert json.loads(data)["name"] == "dense"
        status, _, _ = _call(c, "POST", "/v2/models/nope/infer", b'{"inputs": []}')
        assert status == 404  # errors keep the connection too
    assert c.sock is sock, "the connection was re-opened"
    c.close()


def test_client_vanishing_mid_body_leaves_the_server_serving(http_server: EmbeddedServer) -> None:
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=30) as sock:
        sock.sendall(b"GARBAGE / HTTP/9\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    c = _connect(http_server)
    _assert_serving(c)
    c.close()


def test_repository_endpoints_on_the_wire(conn) -> None:
    status, _, data = _call(conn, "POST", "/v2/repository/index", b"")
    assert status == 200
    assert any(m["name"] == "dense" for m in json.loads(data))
    status, _, data = _call(conn, "POST", "/v2/repository/index", b'{"ready": true}')
    assert all(m["state"] == "READY" for m in json.loads(data))
    status, _, data = _call(conn, "POST", "/v2/repository/index", b'{"ready": 3}')
    assert status == 400
    status, _, data = _call(conn, "POST", "/v2/repository/models/nope/unload", b"{")
    assert status == 400
    assert "malformed JSON" in json.loads(data)["error"]
    status, _, data = _call(conn, "POST", "/v2/repository/models/nope/load", b"{}")
    assert status == 404
    status, _, data = _call(conn, "GET", "/v2/models/stats")
    assert status == 200
    assert json.loads(data)["model_stats"]


# ---------------------------------------------------------------- lifecycle
def test_graceful_shutdown_finishes_in_flight_http(tmp_path: Path) -> None:
    opts = ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["sleepy"],
        drain_timeout=20,
    )
    srv = EmbeddedServer(opts).start()
    port = srv.http_port
    t = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    body, _ = _infer_body([t])

    def one() -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, _, data = _call(c, "POST", "/v2/models/sleepy/infer", body)
        c.close()
        return status, data

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one) for _ in range(6)]
        batcher = srv.server.core.get_version("sleepy").batcher
        deadline = time.monotonic() + 10
        while batcher.in_flight < 6:  # every request is inside the server
            assert time.monotonic() < deadline
            time.sleep(0.005)
        srv.stop()
        results = [f.result(timeout=30) for f in futures]
    for status, data in results:
        assert status == 200, data
        assert json.loads(data)["outputs"][0]["data"] == [2, 4, 6, 8]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_http_port_taken_fails_startup(tmp_path: Path, http_server: EmbeddedServer) -> None:
    opts = ServerOptions(
        model_repository=build_repository(tmp_path / "repo"),
        host="127.0.0.1",
        grpc_port=0,
        http_port=http_server.http_port,
        metrics_port=None,
        model_control_mode="explicit",
        load_models=["identity_int8"],
    )
    from pysonic.server import StartupError

    with pytest.raises(StartupError, match="cannot bind HTTP"):
        EmbeddedServer(opts).start()


@pytest.mark.slow
def test_cli_serve_http_with_a_shipped_model() -> None:
    """``pysonic serve --http-port 0`` logs its HTTP port; ParticleNet-Lite over HTTP equals
    direct onnxruntime on the shipped model file."""
    import onnxruntime as ort

    repo = Path(__file__).resolve().parent.parent / "model_repository"
    rng = np.random.default_rng(11)
    shapes = {
        "pf_points": (2, 2, 100),
        "pf_features": (2, 20, 100),
        "pf_mask": (2, 1, 100),
        "sv_points": (2, 2, 10),
        "sv_features": (2, 11, 10),
        "sv_mask": (2, 1, 10),
    }
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    feeds["pf_mask"] = (feeds["pf_mask"] > 0).astype(np.float32)
    feeds["sv_mask"] = (feeds["sv_mask"] > 0).astype(np.float32)
    with ServerProcess(
        repo, models=["particlenet_lite"], extra_args=["--http-port", "0"]
    ) as server:
        assert server.http_port
        import tritonclient.http as httpclient

        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        inputs = []
        for name, arr in feeds.items():
            i = httpclient.InferInput(name, list(arr.shape), "FP32")
            i.set_data_from_numpy(arr)
            inputs.append(i)
        got = c.infer("particlenet_lite", inputs).as_numpy("softmax")
        c.close()
        assert server.stop() == 0
    sess = ort.InferenceSession(
        str(repo / "particlenet_lite" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    want = sess.run(["softmax"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
