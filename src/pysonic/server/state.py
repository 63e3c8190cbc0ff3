"""Server lifecycle flags shared by the frontends: live, ready, accepting, control mode.

Readiness is false until every startup model has loaded and goes false first on shutdown, so load
balancers stop sending before listeners close.

Example::

    state = ServerState(model_control_mode="explicit")
    state.check_model_control("load")
"""

from __future__ import annotations

from dataclasses import dataclass

from pysonic.errors import UnavailableError

__all__ = ["MODEL_CONTROL_MODES", "ServerState"]

MODEL_CONTROL_MODES = ("none", "poll", "explicit")


@dataclass
class ServerState:
    model_control_mode: str = "none"
    live: bool = True
    ready: bool = False
    accepting: bool = True

    def check_model_control(self, action: str) -> None:
        """Explicit load/unload is allowed only in ``explicit`` mode (as in Triton)."""
        if self.model_control_mode != "explicit":
            msg = (
                f"explicit model {action} is not allowed: the server runs with "
                f"--model-control-mode {self.model_control_mode} (use 'explicit')"
            )
            raise UnavailableError(msg)
