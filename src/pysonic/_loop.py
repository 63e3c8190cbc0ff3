"""Which asyncio event loop pysonic's processes run on: uvloop where it is installed.

uvloop (libuv) makes every I/O wake-up and ``call_soon_threadsafe`` cheaper than asyncio's
selector loop; measured on the identity model at concurrency 8 (2 cores), the server gains about
15% requests/s and the load generator needs less CPU per request. It is a dependency on Linux and
macOS; elsewhere (or with ``PYSONIC_EVENT_LOOP=asyncio``, or ``loop="asyncio"``) the standard loop
is used. grpc.aio runs on either.

Example::

    from pysonic._loop import run
    run(main())                  # uvloop if available
    run(main(), loop="asyncio")  # the standard selector loop
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOPS", "loop_name", "new_event_loop", "run"]

T = TypeVar("T")

#: Accepted values of ``loop=`` / ``--event-loop`` / ``PYSONIC_EVENT_LOOP``.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def _resolve(loop: str | None) -> str:
    choice = (loop or os.environ.get("PYSONIC_EVENT_LOOP") or "auto").lower()
    if choice not in EVENT_LOOPS:
        msg = f"event loop must be one of {', '.join(EVENT_LOOPS)}; got {choice!r}"
        raise ValueError(msg)
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            msg = "uvloop is not installed (pip install uvloop; it needs Linux or macOS)"
            raise ModuleNotFoundError(msg) from None
        return "asyncio"
    return "uvloop"


def loop_name(loop: str | None = None) -> str:
    """The loop ``run``/``new_event_loop`` would use: ``"uvloop"`` or ``"asyncio"``."""
    return _resolve(loop)


def new_event_loop(loop: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind (for a thread that runs its own loop)."""
    if _resolve(loop) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """``asyncio.run`` on the chosen loop."""
    if _resolve(loop) == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
