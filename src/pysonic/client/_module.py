"""The SONIC pattern for user code: implement only ``acquire`` and ``produce``.

A module converts an event into named input arrays (``acquire``) and stores the outputs back into
the event (``produce``); pysonic makes the call in the configured mode. In ``async`` and
``pseudoasync`` modes ``process`` returns a Future that completes after ``produce`` ran, so the
caller's thread can work on other events meanwhile (CMSSW's ExternalWork pattern).

Example::

    class Tagger(SonicModule[dict]):
        def acquire(self, event):
            return {"pf_features": event["features"], "pf_mask": event["mask"]}

        def produce(self, event, outputs):
            event["score"] = outputs["softmax"][:, 0]

    Tagger(client).process(event).result()
"""

from __future__ import annotations

import abc
import concurrent.futures
from collections.abc import Mapping
from typing import Generic, TypeVar

import numpy as np

from pysonic.client._client import Mode, SonicClient

__all__ = ["SonicModule"]

EventT = TypeVar("EventT")


class SonicModule(abc.ABC, Generic[EventT]):
    """Base class for modules that offload inference through a :class:`SonicClient`."""

    def __init__(self, client: SonicClient, mode: Mode | None = None) -> None:
        self.client = client
        self.mode: Mode = mode or client.config.mode

    @abc.abstractmethod
    def acquire(self, event: EventT) -> Mapping[str, np.ndarray]:
        """Convert the event into the model's named inputs."""

    @abc.abstractmethod
    def produce(self, event: EventT, outputs: Mapping[str, np.ndarray]) -> None:
        """Store the model's outputs into the event."""

    def process(self, event: EventT) -> concurrent.futures.Future[None]:
        """acquire -> inference in this module's mode -> produce; the Future ends after produce."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        call = self.client.submit(self.acquire(event), self.mode)

        def finish(fut: concurrent.futures.Future[dict[str, np.ndarray]]) -> None:
            try:
                self.produce(event, fut.result())
            except BaseException as err:  # noqa: BLE001 - delivered through the Future
                done.set_exception(err)
            else:
                done.set_result(None)

        call.add_done_callback(finish)
        return done
