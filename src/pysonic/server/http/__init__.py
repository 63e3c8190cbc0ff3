"""The HTTP/REST frontend: KServe v2 + Triton extensions, JSON and binary tensors.

:class:`HttpApp` is a plain ASGI callable over the same :class:`InferenceCore` as the gRPC
service; :class:`HttpListener` serves it with uvicorn on the server's event loop. See
docs/server.md for the endpoints and the measurements behind the stack.

Example::

    listener = HttpListener(HttpApp(core, state), "0.0.0.0", 8000)
    port = await listener.start()
"""

from __future__ import annotations

from pysonic.server.http.app import DEFAULT_MAX_BODY_BYTES, HttpApp
from pysonic.server.http.listener import HttpListener

__all__ = ["DEFAULT_MAX_BODY_BYTES", "HttpApp", "HttpListener"]
