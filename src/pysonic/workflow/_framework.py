"""A small multithreaded event framework in the style of CMSSW's TBB task-based scheduler.

Why: SONIC's gain comes from the framework, not the client: while an ML module's inference
request is in flight on a remote server, the thread that issued it serves other events. CMSSW
does this with ``edm::ExternalWork`` (``acquire`` starts asynchronous work and returns; the
async callback signals a ``WaitingTaskWithArenaHolder``; then ``produce`` is scheduled). This
module reproduces that model in pure Python so the pysonic workflow measures the same effect:

- a pool of exactly ``threads`` worker threads runs module calls taken from one task queue;
- at most ``streams`` events are in flight, each stream processing one event at a time;
- modules form a DAG by products: a module runs for an event once every module producing one
  of its ``consumes`` has finished for that event; independent modules run concurrently;
- an ExternalWork event is suspended between ``acquire`` and ``holder.done()`` without
  occupying a thread; ``done`` only enqueues the ``produce`` task.

Example::

    class Jets(Producer):
        produces = ("jets",)
        def produce(self, event):
            event.put("jets", cluster(event.payload))

    class Tagger(ExternalWork):
        consumes, produces = ("jets",), ("scores",)
        def acquire(self, event, holder):
            fut = client.infer_async(event.get("jets"))
            fut.add_done_callback(lambda f: holder.done(f.exception()))
        def produce(self, event):
            ...

    report = Process([Jets(), Tagger()], streams=4, threads=2).run(payloads)
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from pysonic.errors import PysonicError
from pysonic.workflow._event import (
    Event,
    ExternalWork,
    Module,
    Producer,
    WaitingTaskHolder,
)
from pysonic.workflow._timing import TimingRecorder, TimingReport

__all__ = ["Process", "ProcessError"]

log = logging.getLogger(__name__)

_ACQUIRE, _PRODUCE = "acquire", "produce"


class ProcessError(PysonicError):
    """A module (or the source, or ``on_event_done``) failed and stopped the run.

    ``module``, ``event_id`` and ``phase`` say where; the original exception is ``__cause__``;
    ``report`` holds the timing up to the failure (None if the run never started)."""

    def __init__(
        self,
        message: str,
        *,
        module: str | None = None,
        event_id: int | None = None,
        phase: str = "",
    ) -> None:
        super().__init__(message)
        self.module, self.event_id, self.phase = module, event_id, phase
        self.report: TimingReport | None = None


class _EventState:
    """Per-event scheduling state: dependency counters and ExternalWork timestamps."""

    __slots__ = (
        "acquire_end",
        "acquire_s",
        "event",
        "lock",
        "pending",
        "remaining",
        "start",
        "wait_s",
    )

    def __init__(self, event: Event, ndeps: Sequence[int]) -> None:
        self.event, self.lock, self.start = event, threading.Lock(), time.perf_counter()
        self.pending, self.remaining = list(ndeps), len(ndeps)
        n = len(ndeps)
        self.acquire_s, self.acquire_end, self.wait_s = [0.0] * n, [0.0] * n, [0.0] * n


class Process:
    """Modules, streams and threads: validated at construction, then :meth:`run` over payloads.

    Construction raises ValueError for duplicate module names, two producers of one product,
    and dependency cycles. ``drain_timeout_s`` bounds how long a failed run waits for
    ExternalWork already in flight before abandoning it (late ``done`` calls are ignored).

    Example::

        process = Process([Jets(), Tagger()], streams=4, threads=2)
        report = process.run(read_events(path), on_event_done=lambda ev: out.append(ev.products))
    """

    def __init__(
        self,
        modules: Iterable[Module],
        *,
        streams: int,
        threads: int,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.modules: tuple[Module, ...] = tuple(modules)
        if streams < 1 or threads < 1:
            msg = f"streams and threads must be >= 1, got streams={streams}, threads={threads}"
            raise ValueError(msg)
        self.streams, self.threads, self.drain_timeout_s = streams, threads, drain_timeout_s
        deps = _dependencies(self.modules)
        # per module: who waits on it, and how many it waits on; roots start each event
        self.dependents = tuple(
            tuple(j for j, d in enumerate(deps) if i in d) for i in range(len(deps))
        )
        self.ndeps = tuple(len(d) for d in deps)
        self.roots = tuple(i for i, n in enumerate(self.ndeps) if not n)

    def run(
        self,
        payloads: Iterable[Any],
        *,
        on_event_done: Callable[[Event], None] | None = None,
    ) -> TimingReport:
        """Process every payload as one event; return the timing report.

        ``on_event_done`` is called on the calling thread once per finished event, before its
        stream takes the next payload. Any failure raises :class:`ProcessError`; ``end_job``
        is called for every module whose ``begin_job`` ran, in both cases."""
        began: list[Module] = []
        try:
            for m in self.modules:
                try:
                    m.begin_job()
                except Exception as exc:
                    msg = f"module {m.name!r} failed in begin_job: {type(exc).__name__}: {exc}"
                    raise ProcessError(msg, module=m.name, phase="begin_job") from exc
                began.append(m)
            report = _Run(self, on_event_done).execute(iter(payloads))
        except BaseException:
            _end_jobs(began, failed=True)
            raise
        _end_jobs(began, failed=False)
        return report


def _dependencies(modules: Sequence[Module]) -> list[frozenset[int]]:
    """Per module, the indices of the modules producing what it consumes; validates the DAG."""
    seen: dict[str, int] = {}
    producer: dict[str, int] = {}
    for i, m in enumerate(modules):
        if not isinstance(m, (Producer, ExternalWork)):
            msg = f"module {m!r} is neither a Producer nor an ExternalWork"
            raise TypeError(msg)
        if not m.name or m.name in seen:
            msg = f"module names must be unique and non-empty: {m.name!r} is used twice"
            raise ValueError(msg)
        seen[m.name] = i
        for p in m.produces:
            if p in producer and producer[p] != i:
                msg = (
                    f"product {p!r} is produced by both {modules[producer[p]].name!r} "
                    f"and {m.name!r}"
                )
                raise ValueError(msg)
            producer[p] = i
    deps = [frozenset(producer[p] for p in m.consumes if p in producer) for m in modules]
    # Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle
    left, indeg = set(range(len(modules))), [len(d) for d in deps]
    ready = [i for i in left if not indeg[i]]
    while ready:
        i = ready.pop()
        left.discard(i)
        for j in left:
            if i in deps[j]:
                indeg[j] -= 1
                if not indeg[j]:
                    ready.append(j)
    if left:
        path = [min(left)]  # follow dependencies inside `left` until one repeats
        while path.count(path[-1]) < 2:
            path.append(min(d for d in deps[path[-1]] if d in left))
        cycle = path[path.index(path[-1]) :][::-1]
        hops = [
            f"{modules[a].name} -[{next(p for p in modules[b].consumes if producer.get(p) == a)}]->"
            for a, b in itertools.pairwise(cycle)
        ]
        msg = f"modules form a dependency cycle: {' '.join(hops)} {modules[cycle[-1]].name}"
        raise ValueError(msg)
    return deps


def _end_jobs(modules: Sequence[Module], *, failed: bool) -> None:
    first: ProcessError | None = None
    for m in modules:
        try:
            m.end_job()
        except Exception as exc:
            if failed or first is not None:  # the first failure is the one reported
                log.warning("module %r failed in end_job", m.name, exc_info=exc)
                continue
            msg = f"module {m.name!r} failed in end_job: {type(exc).__name__}: {exc}"
            first = ProcessError(msg, module=m.name, phase="end_job")
            first.__cause__ = exc
    if first is not None:
        raise first


class _Run:
    """The state of one Process.run: worker threads, task queue, streams and the failure."""

    def __init__(self, process: Process, on_event_done: Callable[[Event], None] | None) -> None:
        self.p, self.on_event_done = process, on_event_done
        self.cond = threading.Condition()
        self.tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.stopping = False  # read without the lock by workers: a bool is read atomically
        self.failure: tuple[ProcessError, BaseException] | None = None
        self.finished: deque[_EventState] = deque()
        self.outstanding = 0  # ExternalWork acquires whose holder has not fired yet
        self.recorder = TimingRecorder(
            {
                m.name: "external" if isinstance(m, ExternalWork) else "producer"
                for m in process.modules
            }
        )
        self.workers = [
            threading.Thread(target=self._work, name=f"pysonic-workflow-{i}", daemon=True)
            for i in range(process.threads)
        ]

    def execute(self, source: Iterator[Any]) -> TimingReport:
        for w in self.workers:
            w.start()
        t0 = time.perf_counter()
        try:
            self._drive(source)
        finally:
            self._shutdown()
        report = self.recorder.report(
            wall_s=time.perf_counter() - t0, streams=self.p.streams, threads=self.p.threads
        )
        if self.failure is not None:
            err, cause = self.failure
            err.report = report
            raise err from cause
        return report

    def _drive(self, source: Iterator[Any]) -> None:
        """The main thread: feed free streams from the source, hand back finished events.

        Only this thread touches ``free_streams``, ``in_flight`` and the source iterator (so a
        generator source needs no locking); it sleeps on the condition between wake-ups."""
        free_streams = list(range(self.p.streams - 1, -1, -1))
        in_flight, next_id, exhausted = 0, 0, False
        while True:
            while free_streams and not exhausted:
                try:
                    payload = next(source)
                except StopIteration:
                    exhausted = True
                    break
                except Exception as exc:  # noqa: BLE001 - user code: fail the run
                    self._fail(None, next_id, "source", exc)
                    return
                st = _EventState(Event(next_id, payload, stream=free_streams.pop()), self.p.ndeps)
                next_id, in_flight = next_id + 1, in_flight + 1
                if not self.p.modules:
                    self._event_finished(st)
                for i in self.p.roots:
                    self._schedule(st, i)
            if exhausted and not in_flight:
                return
            with self.cond:
                self.cond.wait_for(lambda: bool(self.failure or self.finished))
                if self.failure is not None:
                    return
                done = list(self.finished)
                self.finished.clear()
            for st in done:
                if self.on_event_done is not None:
                    try:
                        self.on_event_done(st.event)
                    except Exception as exc:  # noqa: BLE001 - user code: fail the run
                        self._fail(None, st.event.id, "on_event_done", exc)
                        return
                in_flight -= 1
                free_streams.append(st.event.stream)

    def _shutdown(self) -> None:
        with self.cond:
            if self.failure is not None:  # let ExternalWork in flight call back, within limits
                self.cond.wait_for(lambda: not self.outstanding, timeout=self.p.drain_timeout_s)
            self.stopping = True
        for _ in self.workers:
            self.tasks.put(None)
        for w in self.workers:
            w.join()

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            if self.stopping:
                continue  # drain the queue without starting new module calls
            try:
                task()
            except BaseException as exc:  # noqa: BLE001 - a framework bug must fail the run, not hang it
                self._fail(None, None, "workflow worker", exc)

    def _schedule(self, st: _EventState, i: int) -> None:
        phase = _ACQUIRE if isinstance(self.p.modules[i], ExternalWork) else _PRODUCE
        self.tasks.put(partial(self._call, st, i, phase))

    def _call(self, st: _EventState, i: int, phase: str) -> None:
        module, event = self.p.modules[i], st.event
        holder: WaitingTaskHolder | None = None
        t0 = time.perf_counter()
        try:
            if phase == _ACQUIRE:
                holder = WaitingTaskHolder(
                    partial(self._external_done, st, i), label=f"{module.name}, event {event.id}"
                )
                holder._hold()
                with self.cond:
                    self.outstanding += 1
                module.acquire(event, holder)  # type: ignore[attr-defined]
            else:
                module.produce(event)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - module code: any failure fails the run
            if holder is not None:
                with self.cond:
                    self.outstanding -= 1
                    self.cond.notify_all()
            self._fail(module.name, event.id, phase, exc)
            return
        t1 = time.perf_counter()
        if holder is not None:
            st.acquire_s[i], st.acquire_end[i] = t1 - t0, t1
            holder._release()  # may run _external_done right here if done() was already called
            return
        self.recorder.module_done(
            module.name, acquire_s=st.acquire_s[i], wait_s=st.wait_s[i], produce_s=t1 - t0
        )
        self._module_finished(st, i)

    def _external_done(self, st: _EventState, i: int, exc: BaseException | None) -> None:
        """The holder fired (done called and acquire returned): enqueue produce, cheaply."""
        holder_done = time.perf_counter() if exc is None else 0.0
        with self.cond:
            self.outstanding -= 1
            self.cond.notify_all()
            if self.stopping:
                return
            if exc is None:
                st.wait_s[i] = max(0.0, holder_done - st.acquire_end[i])
                self.tasks.put(partial(self._call, st, i, _PRODUCE))
                return
        self._fail(self.p.modules[i].name, st.event.id, "external work (holder.done)", exc)

    def _module_finished(self, st: _EventState, i: int) -> None:
        ready = []
        with st.lock:
            st.remaining -= 1
            for j in self.p.dependents[i]:
                st.pending[j] -= 1
                if not st.pending[j]:
                    ready.append(j)
            last = not st.remaining
        for j in ready:
            self._schedule(st, j)
        if last:
            self._event_finished(st)

    def _event_finished(self, st: _EventState) -> None:
        self.recorder.event_done(time.perf_counter() - st.start)
        with self.cond:
            self.finished.append(st)
            self.cond.notify_all()

    def _fail(
        self, module: str | None, event_id: int | None, phase: str, exc: BaseException
    ) -> None:
        where = f"module {module!r} failed in {phase}" if module else f"{phase} failed"
        msg = f"{where} on event {event_id}: {type(exc).__name__}: {exc}"
        err = ProcessError(msg, module=module, event_id=event_id, phase=phase)
        with self.cond:
            if self.failure is None:
                self.failure = (err, exc)
                self.stopping = True
            self.cond.notify_all()
