"""Events and module kinds of the workflow framework (see :mod:`._framework` for scheduling).

Modules declare the products they consume and produce; a :class:`Producer` does synchronous CPU
work, an :class:`ExternalWork` starts asynchronous work in ``acquire`` and signals its
:class:`WaitingTaskHolder` when it is finished, like CMSSW's ``edm::ExternalWork``.

Example::

    class Jets(Producer):
        produces = ("jets",)
        def produce(self, event):
            event.put("jets", cluster(event.payload))
"""

from __future__ import annotations

import abc
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Event", "ExternalWork", "Module", "Producer", "WaitingTaskHolder"]


class Event:
    """One event: the source's ``payload`` and the products modules put for it.

    Modules of one event may run concurrently on different threads, so the product store is
    guarded by a lock. A product is written once (CMSSW semantics), then only read.

    Example::

        event.put("jets", jets)
        jets = event.get("jets")   # KeyError names the product, the event and what exists
    """

    __slots__ = ("_lock", "_products", "id", "payload", "stream")

    def __init__(self, id: int, payload: Any, *, stream: int = 0) -> None:
        self.id, self.payload, self.stream = id, payload, stream
        self._lock = threading.Lock()
        self._products: dict[str, Any] = {}

    def put(self, name: str, value: Any) -> None:
        with self._lock:
            if name in self._products:
                msg = f"product {name!r} was already put in event {self.id}"
                raise ValueError(msg)
            self._products[name] = value

    def get(self, name: str) -> Any:
        with self._lock:
            if name in self._products:
                return self._products[name]
            known = sorted(self._products)
        msg = f"no product {name!r} in event {self.id}; products: {known or 'none'}"
        raise KeyError(msg)

    @property
    def products(self) -> Mapping[str, Any]:
        """A read-only snapshot of the products put so far."""
        with self._lock:
            return types.MappingProxyType(dict(self._products))

    def __repr__(self) -> str:
        return f"Event(id={self.id}, stream={self.stream}, products={sorted(self._products)})"


class Module:
    """Base of workflow modules: a ``name`` and the products it ``consumes`` and ``produces``.

    Declare them as class attributes or pass them to ``__init__``; the name defaults to the
    class name. Only products produced by other modules create dependencies; anything else a
    module needs it reads from ``event.payload``. ``begin_job``/``end_job`` run once per
    :meth:`Process.run`, on the calling thread (open/close clients there).

    Example::

        tagger = Tagger("tagger_ak4", consumes=("jets_ak4",), produces=("scores_ak4",))
    """

    name: str = ""
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()

    def __init__(
        self,
        name: str | None = None,
        *,
        consumes: Iterable[str] | None = None,
        produces: Iterable[str] | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if consumes is not None:
            self.consumes = tuple(consumes)
        if produces is not None:
            self.produces = tuple(produces)
        if not self.name:
            self.name = type(self).__name__

    def begin_job(self) -> None:
        """Called once before the first event."""

    def end_job(self) -> None:
        """Called once after the last event, also when the run failed."""


class Producer(Module, abc.ABC):
    """A module doing synchronous CPU work in ``produce``, on a worker thread."""

    @abc.abstractmethod
    def produce(self, event: Event) -> None: ...


class ExternalWork(Module, abc.ABC):
    """A module whose work is asynchronous (e.g. a remote inference call), like CMSSW's.

    ``acquire`` starts the work and returns at once; the work calls ``holder.done()`` (or
    ``holder.done(exc)``) exactly once from any thread; then ``produce`` runs on the pool.
    Between the two the event holds no thread."""

    @abc.abstractmethod
    def acquire(self, event: Event, holder: WaitingTaskHolder) -> None: ...

    @abc.abstractmethod
    def produce(self, event: Event) -> None: ...


class WaitingTaskHolder:
    """The handle an ExternalWork's asynchronous work signals when it has finished.

    ``done`` is cheap (it only enqueues the ``produce`` task) and may be called from any thread
    (a gRPC callback, an asyncio loop), exactly once. The framework also holds the holder while
    ``acquire`` runs, so ``produce`` never starts before ``acquire`` has returned, even when
    ``done`` is called from inside ``acquire``.

    Example::

        def acquire(self, event, holder):
            call = stub.ModelInfer.future(request)
            call.add_done_callback(lambda c: holder.done(c.exception()))
    """

    __slots__ = ("_done_at", "_exc", "_gate", "_label", "_lock", "_on_ready")

    def __init__(
        self, on_ready: Callable[[BaseException | None], None], *, label: str = ""
    ) -> None:
        self._on_ready, self._label = on_ready, label
        self._lock = threading.Lock()
        self._gate = 1  # released by done(); the framework adds one while acquire runs
        self._done_at: float | None = None
        self._exc: BaseException | None = None

    def done(self, exc: BaseException | None = None) -> None:
        """Signal that the async work finished (``exc``: it failed); a second call raises."""
        if exc is not None and not isinstance(exc, BaseException):
            msg = f"WaitingTaskHolder.done() takes an exception or None, got {exc!r}"
            raise TypeError(msg)
        with self._lock:
            if self._done_at is not None:
                msg = f"WaitingTaskHolder.done() called twice ({self._label or 'holder'})"
                raise RuntimeError(msg)
            self._done_at = time.perf_counter()
            self._exc = exc
        self._release()

    def _hold(self) -> None:
        with self._lock:
            self._gate += 1

    def _release(self) -> None:
        with self._lock:
            self._gate -= 1
            ready = self._gate == 0
        if ready:
            self._on_ready(self._exc)
