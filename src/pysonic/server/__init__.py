"""The server: core (repository + scheduler + backends), gRPC frontend, metrics, lifecycle."""

from __future__ import annotations

from pysonic.server.app import Server, ServerOptions, StartupError
from pysonic.server.core import InferenceCore
from pysonic.server.embedded import EmbeddedServer
from pysonic.server.process import ServerProcess
from pysonic.server.state import ServerState

__all__ = [
    "EmbeddedServer",
    "InferenceCore",
    "Server",
    "ServerOptions",
    "ServerProcess",
    "ServerState",
    "StartupError",
]
