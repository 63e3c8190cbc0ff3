"""``--model-control-mode poll``: follow the model repository on disk while serving.

Every ``interval`` seconds a task on the server's loop fingerprints the repository (in a worker
thread: it touches the disk; see :mod:`pysonic.repository.watch`) and compares with the previous
scan: a new model directory is loaded, a removed one unloaded (and dropped from the index), a
changed one (config.pbtxt, a version directory added or removed, a model file rewritten)
reloaded -- all through :class:`InferenceCore`'s own ``load``/``unload``, so a reload swaps the
new instances in and drains the old ones without losing a request, and the version policy
decides which of the version directories are served.

A failed (re)load is logged; a model that was serving keeps serving its previous versions, and
the model is tried again only when its files change again (no retry storm on a broken config).
As in Triton, explicit load/unload requests are refused in this mode.

Example::

    poller = RepositoryPoller(core, interval=5.0)
    poller.start(baseline)   # fingerprints taken before the startup load
    ...
    await poller.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pysonic.errors import PysonicError
from pysonic.repository.watch import Fingerprint, repository_fingerprints
from pysonic.server.core import InferenceCore

__all__ = ["RepositoryPoller"]

log = logging.getLogger(__name__)


class RepositoryPoller:
    """Periodic repository scans applied to an :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, interval: float) -> None:
        if interval <= 0:
            msg = f"repository poll interval must be positive, got {interval}"
            raise ValueError(msg)
        self.core = core
        self.interval = interval
        self.polls = 0
        self._seen: dict[str, Fingerprint] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def scan(self) -> dict[str, Fingerprint]:
        """Fingerprints of the repository now (off the loop)."""
        return await asyncio.to_thread(repository_fingerprints, self.core.repository.root)

    def start(self, baseline: dict[str, Fingerprint]) -> None:
        """Poll from now on; ``baseline`` is the state the loaded models were read from."""
        self._seen = dict(baseline)
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="pysonic-repository-poll")

    async def stop(self) -> None:
        """Stop polling; a (re)load in progress finishes first."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            if self._stop.is_set():
                return
            try:
                await self.poll_once()
            except Exception:  # a scan bug must not end polling for the server's lifetime
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """One scan: apply additions, removals and changes since the previous scan."""
        current = await self.scan()
        previous = self._seen
        removed = sorted(previous.keys() - current.keys())
        changed = sorted(
            name for name, fp in current.items() if previous.get(name) != fp
        )  # includes added models
        self._seen = current
        self.polls += 1
        for name in removed:
            if name in self.core.models:
                log.info("model '%s' left the repository: unloading", name)
                await self.core.unload(name, forget=True)
        for name in changed:
            if self._stop.is_set():
                return
            log.info("model '%s' %s: loading", name, "changed" if name in previous else "appeared")
            try:
                await self.core.load(name)
            except PysonicError as err:
                log.error("failed to load model '%s': %s", name, err.message)
