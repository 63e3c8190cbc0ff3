"""Bearer-token authentication and per-model authorization for the HTTP app (ASGI middleware).

The same :class:`~pysonic.server.auth.AuthPolicy` as gRPC: the request's path is mapped to a
:class:`~pysonic.server.auth.Target` (:func:`http_target`) and checked from the
``Authorization`` header alone, before the body is read: 401 (with ``WWW-Authenticate:
Bearer``) without valid credentials, 403 when the caller may not do this. Health endpoints
(``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<m>/ready``) stay open; so does the
Prometheus endpoint, which is served on its own port.

Example::

    app = AuthMiddleware(HttpApp(core, state), AuthPolicy.load("auth.yaml"))
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from pysonic.errors import PysonicError, UnauthenticatedError, http_status
from pysonic.protocol.http_codec import error_body
from pysonic.server.auth import AUTHENTICATED, OPEN, Action, AuthPolicy, Target

__all__ = ["AuthMiddleware", "http_target"]

_MODEL_ACTIONS = {
    "infer": Action.INFER,
    "": Action.METADATA,
    "config": Action.METADATA,
    "stats": Action.METADATA,
}


def http_target(path: str) -> Target:
    """What a request for ``path`` (no query string) asks for; unknown paths need only
    authentication (so nobody probes the server's endpoints without credentials)."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[0] != "v2":
        return AUTHENTICATED
    rest = parts[1:]
    if len(rest) == 2 and rest[0] == "health" and rest[1] in ("live", "ready"):
        return OPEN
    if rest and rest[0] in ("systemsharedmemory", "cudasharedmemory"):
        return Target(Action.SHARED_MEMORY)
    if len(rest) == 4 and rest[:2] == ["repository", "models"]:
        action = {"load": Action.LOAD, "unload": Action.UNLOAD}.get(rest[3])
        return AUTHENTICATED if action is None else Target(action, rest[2])
    if rest == ["models", "stats"]:
        return Target(Action.METADATA, "")
    if len(rest) >= 2 and rest[0] == "models" and rest[1]:
        name, tail = rest[1], rest[2:]
        if tail[:1] == ["versions"]:
            tail = tail[2:]
        what = "/".join(tail)
        if what == "ready":
            return OPEN
        action = _MODEL_ACTIONS.get(what)
        return AUTHENTICATED if action is None else Target(action, name)
    return AUTHENTICATED


class AuthMiddleware:
    """ASGI middleware: answer 401 / 403 before the wrapped app sees the request."""

    def __init__(self, app: Any, policy: AuthPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        target = http_target(raw.split(b"?", 1)[0].decode("latin-1"))
        if not target.open:
            authorization = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                self.policy.check(authorization, target)
            except PysonicError as err:
                await _refuse(send, err)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Any, err: PysonicError) -> None:
    body = error_body(err.message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    if isinstance(err, UnauthenticatedError):
        headers.append((b"www-authenticate", b'Bearer realm="pysonic"'))
    await send({"type": "http.response.start", "status": http_status(err), "headers": headers})
    await send({"type": "http.response.body", "body": body})
