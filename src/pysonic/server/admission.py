"""Admission control: what an inference request may hold before the server commits to it.

Three limits, checked on the event loop before a request's tensors are read (HTTP) or queued
(gRPC), so overload is an immediate answer and never an allocation:

* ``max_request_bytes``: one request's declared size (HTTP ``Content-Length``, the gRPC
  message, and the bytes its shared-memory inputs name). Over it the request can never succeed:
  INVALID_ARGUMENT / 400.
* ``max_inflight_bytes``: the sum over every admitted request that has not answered yet (bodies
  being read, queued, running). Over it: RESOURCE_EXHAUSTED / 503 at once, retry later or
  elsewhere. This bounds the memory that concurrent requests pin, whatever their number.
* ``max_inflight_per_client``: requests in flight per client identity (the ``pysonic-client-id``
  header / gRPC metadata when sent, else the peer's IP address). Over it: RESOURCE_EXHAUSTED /
  503, so one greedy job cannot occupy every queue slot.

The per-model queue bound (``max_queue_size`` in config.pbtxt, ``--max-queue-size`` otherwise) is
the scheduler's (:class:`~pysonic.scheduling.DynamicBatcher`). All state lives on the event loop
thread: no lock. The in-flight count also tells :meth:`pysonic.server.Server.stop` when a drain
is complete.

Example::

    admission = Admission(AdmissionLimits(max_inflight_bytes=1 << 30))
    with admission.admit("10.0.0.7", nbytes=len(body)):
        response = await core.infer(request)
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from types import TracebackType

from pysonic.errors import InvalidArgumentError, ResourceExhaustedError
from pysonic.protocol.types import InferRequest

__all__ = [
    "CLIENT_ID_HEADER",
    "Admission",
    "AdmissionLimits",
    "Ticket",
    "default_inflight_bytes",
    "peer_address",
    "shared_memory_bytes",
]

#: Header (HTTP) / metadata key (gRPC) naming the client for the per-client limit.
CLIENT_ID_HEADER = "pysonic-client-id"


def default_inflight_bytes() -> int:
    """A quarter of this host's physical memory: what admitted requests may pin together by
    default (a batch concatenation and the outputs roughly double what the inputs hold)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Limits for :class:`Admission`; 0 means no limit."""

    max_request_bytes: int = 0
    max_inflight_bytes: int = 0
    max_inflight_per_client: int = 0


class Ticket:
    """One admitted request: a context manager that gives its share back on exit."""

    __slots__ = ("_admission", "client", "nbytes")

    def __init__(self, admission: Admission, client: str, nbytes: int) -> None:
        self._admission = admission
        self.client = client
        self.nbytes = nbytes

    def grow(self, nbytes: int) -> None:
        """Account ``nbytes`` more (inputs found in shared memory once decoded)."""
        self._admission._grow(self, nbytes)

    def resize(self, nbytes: int) -> None:
        """Account ``nbytes`` instead (a body's real size once read)."""
        if nbytes > self.nbytes:
            self.grow(nbytes - self.nbytes)
        else:
            self._admission.inflight_bytes -= self.nbytes - nbytes
            self.nbytes = nbytes

    def release(self) -> None:
        admission, self._admission = self._admission, None  # type: ignore[assignment]
        if admission is not None:
            admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """In-flight accounting for one server (both protocols share it)."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.inflight = 0
        self.inflight_bytes = 0
        self.rejected = 0
        self._per_client: dict[str, int] = {}
        self._idle: asyncio.Event | None = None

    @property
    def tracks_clients(self) -> bool:
        """Whether callers need to name the client (only the per-client limit needs it)."""
        return self.limits.max_inflight_per_client > 0

    def admit(self, client: str = "", nbytes: int = 0) -> Ticket:
        """Admit a request of ``nbytes`` declared bytes from ``client``, or raise at once."""
        limits = self.limits
        self._check_size(nbytes)
        if limits.max_inflight_bytes and self.inflight_bytes + nbytes > limits.max_inflight_bytes:
            self.rejected += 1
            msg = (
                f"server is over its in-flight memory budget: {self.inflight_bytes} bytes held "
                f"by {self.inflight} requests, this one declares {nbytes} "
                f"(--max-inflight-bytes {limits.max_inflight_bytes}); retry later"
            )
            raise ResourceExhaustedError(msg)
        if limits.max_inflight_per_client:
            held = self._per_client.get(client, 0)
            if held >= limits.max_inflight_per_client:
                self.rejected += 1
                msg = (
                    f"client '{client}' already has {held} requests in flight "
                    f"(--max-inflight-per-client {limits.max_inflight_per_client}); retry later"
                )
                raise ResourceExhaustedError(msg)
            self._per_client[client] = held + 1
        self.inflight += 1
        self.inflight_bytes += nbytes
        return Ticket(self, client, nbytes)

    def _check_size(self, nbytes: int) -> None:
        cap = self.limits.max_request_bytes
        if cap and nbytes > cap:
            self.rejected += 1
            msg = (
                f"request declares {nbytes} bytes, over this server's limit of {cap} bytes "
                f"per request (--max-request-bytes)"
            )
            raise InvalidArgumentError(msg)

    def _grow(self, ticket: Ticket, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self._check_size(ticket.nbytes + nbytes)
        budget = self.limits.max_inflight_bytes
        if budget and self.inflight_bytes + nbytes > budget:
            self.rejected += 1
            msg = (
                f"server is over its in-flight memory budget ({self.inflight_bytes} + {nbytes} "
                f"> --max-inflight-bytes {budget}); retry later"
            )
            raise ResourceExhaustedError(msg)
        ticket.nbytes += nbytes
        self.inflight_bytes += nbytes

    def _release(self, ticket: Ticket) -> None:
        self.inflight -= 1
        self.inflight_bytes -= ticket.nbytes
        if self.limits.max_inflight_per_client:
            left = self._per_client[ticket.client] - 1
            if left:
                self._per_client[ticket.client] = left
            else:
                del self._per_client[ticket.client]
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted request is left (a drain); False if ``timeout`` passed first."""
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except TimeoutError:
            return self.inflight == 0
        finally:
            self._idle = None
        return True


def peer_address(peer: str) -> str:
    """The client's address from a gRPC peer string (``ipv4:10.0.0.7:5123`` -> ``10.0.0.7``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer  # unix sockets and the like: the whole string


def shared_memory_bytes(request: InferRequest) -> int:
    """Bytes of ``request``'s inputs that live in shared memory (not in the message): the
    batcher copies them into the batch, so they count against the budgets too."""
    total = 0
    for t in request.inputs:
        if t.parameters and "shared_memory_region" in t.parameters:
            total += t.data.nbytes
    return total
