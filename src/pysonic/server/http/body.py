"""Request bodies in, response bodies out: size limits and gzip / deflate, for the HTTP app.

The size limit is enforced before anything is buffered: a ``Content-Length`` past it is refused
from the headers alone (and the connection closed, so the rest is never read); a chunked body is
counted as it arrives; a compressed body is inflated only up to the limit (a small gzip bomb
cannot grow into gigabytes). Large bodies are (de)compressed on a worker thread (zlib releases
the GIL), never on the event loop.

Example::

    body = await read_body(receive, headers, limit=256 << 20)
    encoding = accepted_encoding(headers.get(b"accept-encoding"))
    payload = await compress(parts, encoding)
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pysonic.errors import InvalidArgumentError

__all__ = [
    "BodyTooLargeError",
    "ClientDisconnected",
    "accepted_encoding",
    "body_too_large",
    "compress",
    "read_body",
]

#: Bodies at least this large are (de)compressed on a worker thread.
OFFLOAD_BYTES = 256 * 1024

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyTooLargeError(InvalidArgumentError):
    """The request body is over the server's limit (the connection is closed after the answer)."""


class ClientDisconnected(Exception):
    """The client went away before its request body arrived; nobody is left to answer."""


async def read_body(
    receive: Callable[[], Awaitable[dict[str, Any]]], headers: dict[bytes, bytes], limit: int
) -> bytes:
    """The whole (decompressed) body; at most one copy when it arrives in several chunks."""
    length = headers.get(b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            msg = f"invalid Content-Length {length.decode(errors='replace')!r}"
            raise InvalidArgumentError(msg) from None
        if declared > limit:
            raise body_too_large(f"{declared} bytes", limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise body_too_large(f"more than {limit} bytes", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get(b"content-encoding")
    if encoding is None:
        return body
    name = encoding.decode(errors="replace").strip().lower()
    if name == "identity":
        return body
    if name not in _WBITS:
        msg = f"unsupported Content-Encoding '{name}' (supported: gzip, deflate)"
        raise InvalidArgumentError(msg)
    if len(body) >= OFFLOAD_BYTES:
        return await asyncio.to_thread(_inflate, body, name, limit)
    return _inflate(body, name, limit)


def body_too_large(what: str, limit: int) -> BodyTooLargeError:
    """The error for a body of ``what`` over ``limit`` (the connection is closed after it)."""
    return BodyTooLargeError(
        f"request body of {what} is over this server's limit of {limit} bytes "
        f"(--http-max-body-bytes / --max-request-bytes)"
    )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress up to ``limit`` bytes; "deflate" accepts zlib-wrapped (RFC 9110) and raw."""
    try:
        return _inflate_with(body, _WBITS[encoding], encoding, limit)
    except zlib.error as err:
        if encoding == "deflate":
            try:
                return _inflate_with(body, -zlib.MAX_WBITS, encoding, limit)
            except zlib.error:
                pass
        msg = f"corrupt {encoding} request body: {err}"
        raise InvalidArgumentError(msg) from None


def _inflate_with(body: bytes, wbits: int, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise body_too_large(f"more than {limit} bytes once decompressed", limit)
    if not inflater.eof or inflater.unused_data:
        msg = f"truncated or corrupt {encoding} request body"
        raise InvalidArgumentError(msg)
    return out


def accepted_encoding(accept: bytes | None) -> str | None:
    """gzip or deflate if the client's ``Accept-Encoding`` prefers one, as Triton picks: the
    first of identity / gzip / deflate with the highest q (so ``gzip, deflate`` is gzip)."""
    if not accept:
        return None
    best, best_q = "identity", 0.0
    for item in accept.decode(errors="replace").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        key, _, value = params.strip().partition("=")
        try:
            q = float(value) if key.strip() == "q" else 1.0
        except ValueError:
            continue
        if name in ("identity", *_WBITS) and q > best_q:
            best, best_q = name, q
    return None if best == "identity" else best


async def compress(parts: Sequence[bytes | memoryview], encoding: str) -> bytes:
    """The parts compressed as one ``encoding`` stream (on a worker thread when large)."""
    if sum(len(p) for p in parts) >= OFFLOAD_BYTES:
        return await asyncio.to_thread(_deflate, parts, encoding)
    return _deflate(parts, encoding)


def _deflate(parts: Sequence[bytes | memoryview], encoding: str) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, _WBITS[encoding])
    out = [compressor.compress(p) for p in parts]
    out.append(compressor.flush())
    return b"".join(out)
