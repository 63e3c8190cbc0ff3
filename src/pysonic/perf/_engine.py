"""The load engine: closed-loop (concurrency) and open-loop (request-rate) load in one process,
and :class:`LoadRunner`, which drives one engine per load process.

Closed loop, perf_analyzer's concurrency mode: ``concurrency`` coroutines each keep exactly one
request in flight. Open loop, its request-rate mode: requests leave on a schedule (constant or
Poisson inter-arrival times) whatever the answers do; a request sent more than 1 ms after its
scheduled time is marked *delayed* (the generator fell behind), as perf_analyzer counts them.

Every completed request is a record ``(start, end, send, recv, delayed)`` on the monotonic clock,
which is the same clock in every process of the host, so the controller can cut records from
several processes into one measurement window. A window is the requests that *ended* in it
(perf_analyzer's rule).

When one process cannot keep up, :class:`LoadRunner` splits the load over several processes
(``spawn``: nothing of the caller is shared): concurrency is divided among them, a request rate
too (each process its own schedule, constant schedules offset in phase). Each process also reports
its CPU time, so the controller can tell when the generator itself is the bottleneck.

Example::

    with LoadRunner(spec, processes=2, slots=8) as runner:
        runner.set_level(LoadLevel(concurrency=8))
        runner.take()                       # drop the warm-up
        time.sleep(2.0)
        records = runner.take()
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pysonic._loop import run
from pysonic.perf._senders import RequestFailed, Sender, TargetSpec, make_sender

__all__ = ["DISTRIBUTIONS", "LoadEngine", "LoadLevel", "LoadRunner", "Records"]

DISTRIBUTIONS = ("constant", "poisson")
_LATE_NS = 1_000_000  #: a request sent later than this after its scheduled time is delayed
_MAX_ERROR_SAMPLES = 5
_MAX_INFLIGHT = 4096  #: open loop: requests in flight per process before sending waits


@dataclass(frozen=True)
class LoadLevel:
    """One load level: ``concurrency`` (closed loop) or ``rate`` requests/s (open loop)."""

    concurrency: int = 0
    rate: float = 0.0
    distribution: str = "constant"

    def __post_init__(self) -> None:
        if (self.concurrency > 0) == (self.rate > 0):
            msg = f"a load level needs exactly one of concurrency or rate, got {self}"
            raise ValueError(msg)
        if self.distribution not in DISTRIBUTIONS:
            msg = f"request distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}"
            raise ValueError(msg)

    @property
    def value(self) -> float:
        return float(self.concurrency) if self.concurrency else self.rate

    def share(self, index: int, count: int) -> LoadLevel | None:
        """Process ``index`` of ``count``'s part of this level (None: nothing for it to do)."""
        if self.concurrency:
            n = self.concurrency // count + (index < self.concurrency % count)
            return replace(self, concurrency=n) if n else None
        return replace(self, rate=self.rate / count)


@dataclass
class Records:
    """Completed requests (ns, monotonic clock) and failures, from one or more processes.

    ``cpu`` holds, per process, ``(cpu_ns, wall_ns)`` read when the records were taken.
    """

    start_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    end_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    send_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recv_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    delayed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))
    error_end_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    error_samples: list[str] = field(default_factory=list)
    cpu: list[tuple[int, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.end_ns)

    @property
    def latency_ns(self) -> np.ndarray:
        return self.end_ns - self.start_ns

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        if not parts:
            return cls()

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            cat("start_ns"), cat("end_ns"), cat("send_ns"), cat("recv_ns"), cat("delayed"),
            cat("error_end_ns"),
            [s for p in parts for s in p.error_samples][:_MAX_ERROR_SAMPLES],
            [c for p in parts for c in p.cpu],
        )  # fmt: skip

    def ended_between(self, t0: int, t1: int) -> Records:
        """The requests (and failures) that ended in ``[t0, t1)``."""
        ok = (self.end_ns >= t0) & (self.end_ns < t1)
        bad = (self.error_end_ns >= t0) & (self.error_end_ns < t1)
        return Records(
            self.start_ns[ok], self.end_ns[ok], self.send_ns[ok], self.recv_ns[ok],
            self.delayed[ok], self.error_end_ns[bad],
            self.error_samples if bad.any() else [], self.cpu,
        )  # fmt: skip


class LoadEngine:
    """Load from one process on its running event loop; see the module docstring."""

    def __init__(self, sender: Sender, *, n_sets: int, slots: int = 1, seed: int = 0) -> None:
        self.sender = sender
        self.n_sets = max(1, n_sets)
        self.slots = max(1, slots)
        self._rng = np.random.default_rng(seed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._records: list[tuple[int, int, int, int, bool]] = []
        self._errors: list[int] = []
        self._error_samples: list[str] = []
        self._next_set = 0
        self.succeeded = 0
        self.failed = 0
        self._crash: str | None = None
        self._generation = 0

    async def open(self) -> None:
        await self.sender.open(self.slots)

    async def _one(self, slot: int, delayed: bool) -> None:
        k = self._next_set
        self._next_set = (k + 1) % self.n_sets
        now = time.monotonic_ns
        start = now()
        try:
            send, recv = await self.sender.infer(k, slot)
        except RequestFailed as err:  # counted; the load goes on
            self.failed += 1
            self._errors.append(now())
            if len(self._error_samples) < _MAX_ERROR_SAMPLES:
                self._error_samples.append(str(err))
            return
        self.succeeded += 1
        self._records.append((start, now(), send, recv, delayed))

    async def _closed(self, slot: int, generation: int) -> None:
        while self._generation == generation:
            await self._one(slot, False)

    async def _open(self, level: LoadLevel, phase: float) -> None:
        interval_ns = 1e9 / level.rate
        poisson = level.distribution == "poisson"
        now = time.monotonic_ns
        due = float(now()) + (0.0 if poisson else phase * interval_ns)
        room = asyncio.Event()
        inflight = 0

        def finished(task: asyncio.Task[Any]) -> None:
            nonlocal inflight
            inflight -= 1
            room.set()
            self._done(task)

        k, generation = 0, self._generation
        while self._generation == generation:
            if poisson:
                due += self._rng.exponential(interval_ns)
            wait = due - now()
            if wait > 200_000:  # the loop's timers have ~1 ms resolution; short waits spin once
                await asyncio.sleep(wait / 1e9)
            else:
                await asyncio.sleep(0)
            while inflight >= _MAX_INFLIGHT:  # bounded: never unbounded task spawning
                room.clear()
                await room.wait()
            if self._generation != generation:
                return
            late = now() - due > _LATE_NS
            task = asyncio.ensure_future(self._one(k % self.slots, late))
            inflight += 1
            self._tasks.add(task)
            task.add_done_callback(finished)
            k += 1
            if not poisson:
                due += interval_ns

    def _done(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished task; remember an unexpected crash for :meth:`take` to raise."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            err = task.exception()
            self._crash = f"{type(err).__name__}: {err}"

    async def set_level(self, level: LoadLevel | None, phase: float = 0.0) -> None:
        """Stop the current load (in-flight requests are cancelled) and start ``level``."""
        await self.stop_load()
        if level is None:
            return
        if level.concurrency:
            gen = self._generation
            coros = [self._closed(slot % self.slots, gen) for slot in range(level.concurrency)]
        else:
            coros = [self._open(level, phase)]
        for coro in coros:
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def stop_load(self, drain_s: float = 30.0) -> None:
        """Send nothing new; let in-flight requests finish (recorded) for up to ``drain_s``,
        then cancel the rest. Draining keeps client and server counts equal."""
        self._generation += 1
        tasks, self._tasks = self._tasks, set()
        if tasks and drain_s > 0:
            await asyncio.wait(tasks, timeout=drain_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def take(self) -> Records:
        """The records since the last take (this process's CPU time attached)."""
        if self._crash is not None:
            msg = f"a load task crashed: {self._crash}"
            raise RuntimeError(msg)
        recs, self._records = self._records, []
        errs, self._errors = self._errors, []
        samples, self._error_samples = self._error_samples, []
        arr = np.array(recs, dtype=np.int64).reshape(-1, 5)
        return Records(
            arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4].astype(np.bool_),
            np.asarray(errs, dtype=np.int64), samples,
            [(time.process_time_ns(), time.monotonic_ns())],
        )  # fmt: skip

    async def close(self) -> tuple[int, int]:
        """Stop and release; (successful, failed) requests over the engine's life."""
        await self.stop_load()
        await self.sender.close()
        return self.succeeded, self.failed


async def _serve(spec: TargetSpec, conn: Any, slots: int, index: int, count: int) -> None:
    """A load process's command loop: ``level``, ``take``, ``stop`` over a pipe."""
    engine = LoadEngine(make_sender(spec), n_sets=len(spec.input_sets), slots=slots, seed=index)
    try:
        await engine.open()
    except Exception as err:  # noqa: BLE001 - reported to the controller, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        await engine.close()
        return
    conn.send(("ok", None))
    loop = asyncio.get_running_loop()
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "level":
                level = arg.share(index, count) if arg is not None else None
                await engine.set_level(level, phase=index / count)
                answer: Any = None
            elif cmd == "take":
                answer = engine.take()
            else:
                conn.send(("ok", await engine.close()))
                return
        except Exception as err:  # noqa: BLE001 - reported to the controller, which raises it
            conn.send(("error", f"{type(err).__name__}: {err}"))
            await engine.close()
            return
        conn.send(("ok", answer))


def _process_main(spec: TargetSpec, conn: Any, slots: int, index: int, count: int) -> None:
    run(_serve(spec, conn, slots, index, count))


class LoadRunner:
    """Drive ``processes`` load engines (1: a thread of this process) with one command set."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        processes: int = 1,
        slots: int = 1,
        start_timeout: float = 120.0,
    ) -> None:
        self.spec = spec
        self.processes = max(1, processes)
        self.slots = max(1, math.ceil(slots / self.processes))
        self.start_timeout = start_timeout
        self._conns: list[Any] = []
        self._workers: list[Any] = []
        self.totals: tuple[int, int] = (0, 0)

    def start(self) -> LoadRunner:
        for index in range(self.processes):
            if self.processes == 1:
                ours, theirs = multiprocessing.Pipe()
                args = (self.spec, theirs, self.slots, 0, 1)
                worker: Any = threading.Thread(
                    target=_process_main, args=args, daemon=True, name="pysonic-load"
                )
            else:
                ctx = multiprocessing.get_context("spawn")
                ours, theirs = ctx.Pipe()
                args = (self.spec, theirs, self.slots, index, self.processes)
                worker = ctx.Process(target=_process_main, args=args, daemon=True)
            worker.start()
            self._conns.append(ours)
            self._workers.append(worker)
        try:
            self._all(None, timeout=self.start_timeout)
        except BaseException:
            self._kill()
            raise
        return self

    def _all(self, command: tuple[str, Any] | None, timeout: float = 120.0) -> list[Any]:
        """Send ``command`` to every engine and collect the answers (or ready messages)."""
        if command is not None:
            for conn in self._conns:
                conn.send(command)
        answers = []
        deadline = time.monotonic() + timeout
        for conn, worker in zip(self._conns, self._workers, strict=True):
            while not conn.poll(0.1):
                if not worker.is_alive() or time.monotonic() > deadline:
                    why = "it exited" if not worker.is_alive() else "no answer before the deadline"
                    msg = f"load generator process failed: {why}"
                    raise RuntimeError(msg)
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", "it closed its pipe (exited)"
            if status != "ok":
                msg = f"load generator process failed: {value}"
                raise RuntimeError(msg)
            answers.append(value)
        return answers

    def set_level(self, level: LoadLevel | None) -> None:
        self._all(("level", level))

    def take(self) -> Records:
        return Records.concat(self._all(("take", None)))

    def close(self) -> tuple[int, int]:
        """Stop every engine; (successful, failed) requests over the runner's life."""
        if not self._conns:
            return self.totals
        try:
            totals = self._all(("stop", None))
            self.totals = (sum(t[0] for t in totals), sum(t[1] for t in totals))
        finally:
            for w in self._workers:
                w.join(10)
            self._kill()
        return self.totals

    def _kill(self) -> None:
        for w in self._workers:
            if isinstance(w, multiprocessing.process.BaseProcess) and w.is_alive():
                w.kill()
                w.join(5)
        for c in self._conns:
            c.close()
        self._conns, self._workers = [], []

    def __enter__(self) -> LoadRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
