"""KServe v2 / Triton HTTP endpoints as one plain ASGI callable over :class:`InferenceCore`.

No web framework: the path is split once and matched in :meth:`HttpApp._route`. Chosen by
measurement (``benchmarks/http_stacks.py``, the same echo /infer, tritonclient.http at
concurrency 8, server CPU per request): this raw ASGI app under uvicorn + httptools ~200 us,
Starlette under the same uvicorn ~270 us, aiohttp's web server ~260 us; a bare
``asyncio.Protocol`` on httptools ~95 us is the floor, but would make pysonic own HTTP/1.1
(chunked bodies, pipelining, ``Expect: 100-continue``, flow control, graceful connection close)
that uvicorn already gets right. Inference decodes into the same ``InferRequest`` as gRPC
(:mod:`pysonic.protocol.http_codec`) and calls the same :meth:`InferenceCore.infer`; the other
answers come from :mod:`pysonic.server.introspection`, rendered as JSON. Every ``PysonicError``
becomes its HTTP status (:func:`pysonic.errors.http_status`) with Triton's ``{"error": "..."}``
body; anything else is a 500, logged once. Request bodies are size-limited and may be gzip /
deflate compressed; inference responses are compressed when ``Accept-Encoding`` asks.

Example::

    app = HttpApp(core, state, max_body_bytes=256 << 20)
    # served by pysonic.server.http.HttpListener (uvicorn) on the server's event loop
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

from google.protobuf.message import Message

from pysonic.errors import (
    InvalidArgumentError,
    NotFoundError,
    PysonicError,
    UnavailableError,
    UnimplementedError,
    http_status,
)
from pysonic.protocol.http_codec import (
    decode_infer_request,
    dump_json,
    encode_infer_response,
    error_body,
    json_elements,
    load_json,
    message_to_json,
)
from pysonic.protocol.shm import CUDA_UNSUPPORTED
from pysonic.server import introspection as answers
from pysonic.server.admission import CLIENT_ID_HEADER, Admission, Ticket, shared_memory_bytes
from pysonic.server.core import InferenceCore
from pysonic.server.http.body import (
    OFFLOAD_BYTES,
    BodyTooLargeError,
    ClientDisconnected,
    accepted_encoding,
    body_too_large,
    compress,
    read_body,
)
from pysonic.server.state import ServerState

__all__ = ["DEFAULT_MAX_BODY_BYTES", "HttpApp"]

log = logging.getLogger(__name__)

#: Default request body limit: the same as gRPC's message limit.
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
#: Outputs with at least this many elements going to JSON are encoded on a worker thread.
_OFFLOAD_JSON_ELEMENTS = 32 * 1024
#: Responses at least this large are sent as separate views (header, each binary output).
_SPLIT_BYTES = 64 * 1024

_REGION_ACTIONS = ("status", "register", "unregister")
_MODEL_GETS = ("", "ready", "config", "stats")
_JSON = b"application/json"
_BINARY = b"application/octet-stream"

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Reply:
    status: int = 200
    parts: list[bytes | memoryview] = field(default_factory=list)
    content_type: bytes = _JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: compressed when Accept-Encoding asks (inference responses only, as Triton)
    compressible: bool = False


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    receive: Receive
    #: the client's (host, port) from the ASGI scope
    peer: tuple[str, int] | None = None


def _json(obj: Any) -> _Reply:
    return _Reply(parts=[dump_json(obj)])


def _message(msg: Message) -> _Reply:
    return _json(message_to_json(msg))


def _flag(ok: bool) -> _Reply:
    """Health and readiness: 200 or 400 with no body (as Triton)."""
    return _Reply(200 if ok else 400)


class HttpApp:
    """The ASGI application: ``await app(scope, receive, send)``."""

    def __init__(
        self,
        core: InferenceCore,
        state: ServerState,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        admission: Admission | None = None,
    ) -> None:
        self.core = core
        self.state = state
        self.max_body_bytes = max_body_bytes
        #: in-flight limits shared with the gRPC service (a private, unlimited one if not given)
        self.admission = admission or Admission()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websocket protocol: the Server owns startup and shutdown
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1")
        req = _Request(scope["method"], path, dict(scope["headers"]), receive, scope.get("client"))
        try:
            reply = await self._route(req, [unquote(p) for p in path.strip("/").split("/")])
        except ClientDisconnected:
            return
        except PysonicError as err:
            reply = _Reply(http_status(err), [error_body(err.message)])
            if isinstance(err, BodyTooLargeError):
                reply.headers.append((b"connection", b"close"))  # do not read the rest
        except Exception:
            log.exception("internal error answering %s %s", req.method, path)
            reply = _Reply(500, [error_body(f"internal error in {path}; see the server log")])
        await self._send(send, reply, req.headers)

    async def _send(self, send: Send, reply: _Reply, request_headers: dict[bytes, bytes]) -> None:
        parts = reply.parts
        headers = [(b"content-type", reply.content_type), *reply.headers]
        if reply.compressible:
            encoding = accepted_encoding(request_headers.get(b"accept-encoding"))
            if encoding is not None:
                parts = [await compress(parts, encoding)]
                headers.append((b"content-encoding", encoding.encode()))
        size = sum(len(p) for p in parts)
        headers.append((b"content-length", b"%d" % size))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if len(parts) > 1 and size >= _SPLIT_BYTES:
            for p in parts[:-1]:
                await send({"type": "http.response.body", "body": p, "more_body": True})
            await send({"type": "http.response.body", "body": parts[-1]})
        else:
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ routing
    async def _route(self, req: _Request, parts: list[str]) -> _Reply:
        """``/v2/...`` by segments; unknown paths are 404, wrong methods 405."""
        if parts[0] != "v2":
            raise NotFoundError(f"no endpoint {req.path} (KServe v2 endpoints are under /v2)")
        rest = parts[1:]
        head = rest[0] if rest else ""
        if not rest:
            return self._only(req, "GET") or _message(answers.server_metadata())
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            if blocked := self._only(req, "GET"):
                return blocked
            if rest[1] == "live":
                return _flag(self.state.live)
            return _flag(answers.server_ready(self.core, self.state))
        if head == "models":
            return await self._model_route(req, rest[1:])
        if head == "repository":
            return await self._repository_route(req, rest[1:])
        if head in ("systemsharedmemory", "cudasharedmemory"):
            return await self._shared_memory_route(req, head, rest[1:])
        if rest in (["trace", "setting"], ["logging"]):
            if blocked := self._only(req, "GET", "POST"):
                return blocked
            what = "trace settings" if head == "trace" else "log settings"
            raise UnimplementedError(f"{what} are not supported by this server")
        raise NotFoundError(f"no endpoint {req.path}")

    async def _model_route(self, req: _Request, rest: list[str]) -> _Reply:
        if rest == ["stats"]:
            return self._only(req, "GET") or _message(answers.model_statistics(self.core))
        if not rest or not rest[0]:
            raise NotFoundError(f"no endpoint {req.path} (expected /v2/models/<model>/...)")
        name, rest = rest[0], rest[1:]
        version = ""
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or not rest[1]:
                raise NotFoundError(f"no endpoint {req.path} (expected .../versions/<version>)")
            version, rest = rest[1], rest[2:]
        action = "/".join(rest)
        if action == "infer":
            return self._only(req, "POST") or await self._infer(req, name, version)
        if action == "trace/setting":
            if blocked := self._only(req, "GET", "POST"):
                return blocked
            raise UnimplementedError("trace settings are not supported by this server")
        if action not in _MODEL_GETS:
            raise NotFoundError(f"no endpoint {req.path}")
        if blocked := self._only(req, "GET"):
            return blocked
        if action == "":
            return _message(answers.model_metadata(self.core, name, version))
        if action == "ready":
            return _flag(answers.model_ready(self.core, self.state, name, version))
        if action == "config":
            return _message(answers.model_config(self.core, name, version).config)
        return _message(answers.model_statistics(self.core, name, version))  # "stats"

    async def _repository_route(self, req: _Request, rest: list[str]) -> _Reply:
        if blocked := self._only(req, "POST"):
            return blocked
        if rest == ["index"]:
            options = await self._json_body(req)
            ready = options.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgumentError("repository index: 'ready' must be true or false")
            index = message_to_json(answers.repository_index(self.core, ready))
            return _json(index["models"])
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            options = await self._json_body(req)
            params = options.get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidArgumentError("model load/unload: 'parameters' must be an object")
            if rest[2] == "load":
                await answers.load_model(self.core, self.state, rest[1], params)
            else:
                await answers.unload_model(self.core, self.state, rest[1])
            return _Reply()
        raise NotFoundError(f"no endpoint {req.path}")

    async def _json_body(self, req: _Request) -> dict[str, Any]:
        """An optional JSON object body (empty means ``{}``)."""
        body = await read_body(req.receive, req.headers, self.max_body_bytes)
        if not body.strip():
            return {}
        obj = load_json(body)
        if not isinstance(obj, dict):
            raise InvalidArgumentError(f"{req.path}: the request body must be a JSON object")
        return obj

    def _only(self, req: _Request, *methods: str) -> _Reply | None:
        """A 405 reply if ``req`` uses another method, else None."""
        if req.method in methods:
            return None
        allowed = ", ".join(methods)
        msg = f"method {req.method} is not allowed for {req.path} (allowed: {allowed})"
        return _Reply(405, [error_body(msg)], headers=[(b"allow", allowed.encode())])

    # ------------------------------------------------------------------ inference
    async def _infer(self, req: _Request, name: str, version: str) -> _Reply:
        if not self.state.accepting:
            raise UnavailableError("server is shutting down")
        with self._admit(req) as ticket:
            return await self._admitted_infer(req, ticket, name, version)

    def _admit(self, req: _Request) -> Ticket:
        """Admission from the headers alone, before the body is read: ``Content-Length`` is
        what the request declares (a chunked body is charged the per-request limit until it
        has arrived)."""
        admission = self.admission
        client = ""
        if admission.tracks_clients:
            named = req.headers.get(CLIENT_ID_HEADER.encode())
            if named is not None:
                client = named.decode(errors="replace")
            elif req.peer is not None:
                client = req.peer[0]
        length = req.headers.get(b"content-length")
        declared = self.max_body_bytes
        if length is not None and length.isdigit():
            declared = int(length)
            if declared > self.max_body_bytes:
                raise body_too_large(f"{declared} bytes", self.max_body_bytes)
        return admission.admit(client, declared)

    async def _admitted_infer(
        self, req: _Request, ticket: Ticket, name: str, version: str
    ) -> _Reply:
        body = await read_body(req.receive, req.headers, self.max_body_bytes)
        # chunked: charge what arrived, not the limit; compressed: what it inflated to
        ticket.resize(len(body))
        header_length = _header_length(req.headers)
        json_size = len(body) if header_length is None else header_length
        if json_size >= OFFLOAD_BYTES:  # a large JSON header: parse it off the loop
            request = await asyncio.to_thread(
                decode_infer_request, body, header_length, name, version, self.core.shared_memory
            )
        else:
            request = decode_infer_request(
                body, header_length, name, version, self.core.shared_memory
            )
        ticket.grow(shared_memory_bytes(request))
        response = await _unless_disconnected(self.core.infer(request), req.receive)
        if json_elements(response, request) >= _OFFLOAD_JSON_ELEMENTS:
            parts, out_length = await asyncio.to_thread(encode_infer_response, response, request)
        else:
            parts, out_length = encode_infer_response(response, request)
        if out_length is None:
            return _Reply(parts=parts, compressible=True)
        header = (b"inference-header-content-length", b"%d" % out_length)
        return _Reply(parts=parts, content_type=_BINARY, headers=[header], compressible=True)

    # ------------------------------------------------------------------ shared memory
    async def _shared_memory_route(self, req: _Request, family: str, rest: list[str]) -> _Reply:
        """``status``, ``unregister`` (all) and ``region/<name>/{status,register,unregister}``."""
        if rest in (["status"], ["unregister"]):
            action, region = rest[0], ""
        elif len(rest) == 3 and rest[0] == "region" and rest[2] in _REGION_ACTIONS:
            action, region = rest[2], rest[1]
        else:
            raise NotFoundError(f"no endpoint {req.path}")
        if blocked := self._only(req, "GET" if action == "status" else "POST"):
            return blocked
        if family == "systemsharedmemory":
            return await self._system_shared_memory(req, action, region)
        return await self._cuda_shared_memory(req, action, region)

    async def _system_shared_memory(self, req: _Request, action: str, region: str) -> _Reply:
        """System shared memory status / register / unregister on the core's registry (the one
        gRPC uses too)."""
        registry = self.core.shared_memory
        if action == "status":
            return _json([s.to_json() for s in registry.status(region)])
        if action == "unregister":
            registry.unregister(region)
            return _Reply()
        body = await self._json_body(req)
        key = body.get("key")
        offset = body.get("offset", 0)
        byte_size = body.get("byte_size")
        registry.register(region, key, offset, byte_size)  # type: ignore[arg-type]
        return _Reply()

    async def _cuda_shared_memory(self, req: _Request, action: str, region: str) -> _Reply:
        """CUDA shared memory: not provided (no CUDA IPC in pysonic)."""
        raise UnimplementedError(CUDA_UNSUPPORTED)


async def _unless_disconnected(infer: Awaitable[T], receive: Receive) -> T:
    """Await ``infer``, but cancel it if the client disconnects first.

    A client that gave up (its timeout passed, the job was killed) closes the connection: the
    request is then dropped from the model's queue and never executed, as a cancelled gRPC call
    is (:meth:`InferenceCore.infer` cancels its queued request when cancelled). The body was
    read whole already, so the next ``receive`` returns only when the connection goes."""
    task = asyncio.current_task()
    assert task is not None
    watch = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task))
    try:
        return await infer
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled() and watch.result():
            if hasattr(task, "uncancel"):  # Python >= 3.11 counts cancellations
                task.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watch.cancel()


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> bool:
    for _ in range(8):  # nothing else should come after a complete body; do not spin if it does
        if (await receive())["type"] == "http.disconnect":
            task.cancel()
            return True
    return False


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"inference-header-content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        shown = value.decode(errors="replace")
        msg = f"unable to parse Inference-Header-Content-Length, got {shown!r}"
        raise InvalidArgumentError(msg) from None
    if length < 0:
        msg = f"Inference-Header-Content-Length must not be negative, got {length}"
        raise InvalidArgumentError(msg)
    return length
