"""The workflow framework: DAG scheduling, streams, ExternalWork without blocking, errors, timing.

Concurrency is proven with barriers and conditions that wait with deadlines (never sleeps that
hope for an interleaving); sleeps only simulate work inside modules. Timing assertions are
lower bounds or loose bands, since the test machine is small and shared.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import pysonic.workflow as wf
from pysonic.errors import PysonicError
from pysonic.workflow import (
    Event,
    ExternalWork,
    Process,
    ProcessError,
    Producer,
    TimingReport,
    WaitingTaskHolder,
)

DEADLINE_S = 10.0


class Log:
    """A thread-safe record of (event id, module, "start"/"end") in the order they happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[int, str, str]] = []

    def add(self, event: Event, name: str, what: str) -> None:
        with self.lock:
            self.entries.append((event.id, name, what))

    def index(self, event_id: int, name: str, what: str) -> int:
        return self.entries.index((event_id, name, what))


class Step(Producer):
    """Puts its products (sum of its inputs + 1), logging start/end; ``hook`` runs in between."""

    def __init__(
        self,
        name: str,
        consumes: tuple[str, ...] = (),
        *,
        log: Log | None = None,
        hook: Callable[[Event], None] | None = None,
        work_s: float = 0.0,
    ) -> None:
        super().__init__(name, consumes=consumes, produces=(name.lower(),))
        self.log, self.hook, self.work_s = log, hook, work_s

    def produce(self, event: Event) -> None:
        if self.log:
            self.log.add(event, self.name, "start")
        if self.hook:
            self.hook(event)
        if self.work_s:
            time.sleep(self.work_s)  # simulated CPU work
        value = 1 + sum(event.get(p) for p in self.consumes) if self.consumes else event.payload
        event.put(self.produces[0], value)
        if self.log:
            self.log.add(event, self.name, "end")


class PairingServer:
    """Fake async server: completes holders in pairs, once two acquires are in flight at once.

    If the framework blocked its only thread inside ``acquire``, the second acquire would never
    come; the server then gives up at its deadline, records it, and completes what it has."""

    def __init__(self, expected: int) -> None:
        self.cond = threading.Condition()
        self.pending: list[WaitingTaskHolder] = []
        self.max_in_flight = 0
        self.timed_out = False
        self.expected = expected
        self.thread = threading.Thread(target=self._serve, name="pairing-server")
        self.thread.start()

    def submit(self, holder: WaitingTaskHolder) -> None:
        with self.cond:
            self.pending.append(holder)
            self.max_in_flight = max(self.max_in_flight, len(self.pending))
            self.cond.notify_all()

    def _serve(self) -> None:
        served = 0
        while served < self.expected:
            want = min(2, self.expected - served)
            with self.cond:
                ok = self.cond.wait_for(lambda n=want: len(self.pending) >= n, DEADLINE_S)
                self.timed_out |= not ok
                batch, self.pending = self.pending, []
            for holder in batch:
                holder.done()
            served += len(batch)
            if not ok:
                return


class Remote(ExternalWork):
    def __init__(
        self,
        name: str,
        submit: Callable[[Event, WaitingTaskHolder], None],
        consumes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, consumes=consumes, produces=(name.lower(),))
        self.submit = submit
        self.produced: list[int] = []

    def acquire(self, event: Event, holder: WaitingTaskHolder) -> None:
        self.submit(event, holder)

    def produce(self, event: Event) -> None:
        self.produced.append(event.id)
        event.put(self.produces[0], event.id)


def workflow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pysonic-workflow-")]


def test_process_error_is_a_pysonic_error() -> None:
    assert wf.__all__ == sorted(wf.__all__)
    assert issubclass(ProcessError, PysonicError)


@pytest.mark.parametrize("threads", [1, 3])
def test_chain_and_diamond_respect_dependencies(threads: int) -> None:
    log = Log()
    modules = [  # deliberately not in dependency order
        Step("C", ("b",), log=log),
        Step("B", ("a",), log=log),
        Step("A", log=log),
        Step("D", ("a",), log=log),
        Step("E", ("a",), log=log),
        Step("F", ("d", "e"), log=log),
    ]
    done: list[Event] = []
    Process(modules, streams=3, threads=threads).run(range(10), on_event_done=done.append)
    edges = [("A", "B"), ("B", "C"), ("A", "D"), ("A", "E"), ("D", "F"), ("E", "F")]
    for ev in range(10):
        for producer, consumer in edges:
            assert log.index(ev, producer, "end") < log.index(ev, consumer, "start")
    assert sorted(e.id for e in done) == list(range(10))
    assert all(e.get("c") == e.payload + 2 for e in done)
    assert all(e.get("f") == 2 * e.payload + 3 for e in done)


def test_independent_modules_of_one_event_overlap() -> None:
    # B and C both wait on one barrier: it only opens if they run at the same time
    barrier = threading.Barrier(2, timeout=DEADLINE_S)
    modules = [
        Step("A"),
        Step("B", ("a",), hook=lambda _: barrier.wait()),
        Step("C", ("a",), hook=lambda _: barrier.wait()),
        Step("D", ("b", "c")),
    ]
    done: list[Event] = []
    Process(modules, streams=1, threads=2).run([5], on_event_done=done.append)
    assert done[0].get("d") == 2 * 5 + 3


def test_external_work_does_not_block_the_only_thread() -> None:
    server = PairingServer(expected=6)
    remote = Remote("R", lambda _, holder: server.submit(holder))
    done: list[Event] = []
    try:
        report = Process([remote], streams=2, threads=1).run(range(6), on_event_done=done.append)
    finally:
        server.thread.join(DEADLINE_S)
    assert not server.timed_out
    assert server.max_in_flight == 2
    assert sorted(remote.produced) == list(range(6))
    assert report.modules["R"].calls == 6


def test_streams_bound_events_in_flight() -> None:
    streams = 3
    lock = threading.Lock()
    in_flight: dict[int, int] = {}  # event id -> stream
    peak = [0]
    barrier = threading.Barrier(streams, timeout=DEADLINE_S)

    def enter(event: Event) -> None:
        with lock:
            assert event.stream not in in_flight.values()
            in_flight[event.id] = event.stream
            peak[0] = max(peak[0], len(in_flight))
        if event.id < streams:  # the first events meet: all streams are really used
            barrier.wait()

    def leave(event: Event) -> None:
        with lock:
            del in_flight[event.id]

    modules = [Step("A", hook=enter), Step("B", ("a",), work_s=0.001), Step("C", ("a",))]
    Process(modules, streams=streams, threads=4).run(range(30), on_event_done=leave)
    assert peak[0] == streams
    assert not in_flight


def test_every_payload_processed_once() -> None:
    seen: list[tuple[int, Any, int]] = []
    calls: list[int] = []
    lock = threading.Lock()

    def count(event: Event) -> None:
        with lock:
            calls.append(event.id)

    def delay(event: Event, holder: WaitingTaskHolder) -> None:
        threading.Timer(0.001 * (event.id % 3), holder.done).start()

    modules = [Step("A", hook=count), Remote("R", delay, consumes=("a",)), Step("B", ("r",))]
    payloads = (f"p{i}" for i in range(40))  # a generator: consumed on one thread only

    def on_done(event: Event) -> None:
        seen.append((event.id, event.payload, event.get("b")))
        assert set(event.products) == {"a", "r", "b"}

    report = Process(modules, streams=4, threads=3).run(payloads, on_event_done=on_done)
    assert sorted(seen) == [(i, f"p{i}", i + 1) for i in range(40)]
    assert sorted(calls) == list(range(40))
    assert report.events == 40


def test_event_get_names_product_event_and_known_products() -> None:
    event = Event(7, payload=None)
    event.put("jets", [1])
    with pytest.raises(KeyError, match=r"'met'.*event 7.*\['jets'\]"):
        event.get("met")
    with pytest.raises(ValueError, match="already"):
        event.put("jets", [2])
    with pytest.raises(TypeError):
        event.products["x"] = 1  # type: ignore[index]


def _run_failing(modules: list[Any], **kwargs: Any) -> ProcessError:
    ended: list[str] = []
    for m in modules:
        m.end_job = lambda m=m: ended.append(m.name)
    t0 = time.monotonic()
    with pytest.raises(ProcessError) as info:
        Process(modules, **kwargs).run(range(1000))
    assert time.monotonic() - t0 < DEADLINE_S
    assert sorted(ended) == sorted(m.name for m in modules)
    assert not workflow_threads()
    return info.value


def test_producer_exception_fails_the_run() -> None:
    def boom(event: Event) -> None:
        if event.id == 5:
            raise ValueError("bad jet")

    err = _run_failing([Step("A"), Step("Bad", ("a",), hook=boom)], streams=3, threads=2)
    assert "module 'Bad' failed in produce on event 5: ValueError: bad jet" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert (err.module, err.event_id, err.phase) == ("Bad", 5, "produce")
    assert err.report is not None
    assert err.report.events < 1000


def test_holder_done_with_exception_fails_the_run() -> None:
    def submit(event: Event, holder: WaitingTaskHolder) -> None:
        exc = ConnectionError("server gone") if event.id == 3 else None
        threading.Thread(target=holder.done, args=(exc,)).start()

    err = _run_failing([Remote("Tagger", submit)], streams=4, threads=2)
    assert "module 'Tagger' failed in external work (holder.done) on event 3" in str(err)
    assert "ConnectionError: server gone" in str(err)
    assert isinstance(err.__cause__, ConnectionError)


def test_abandoned_external_work_does_not_hang() -> None:
    # event 0 never calls done; event 1 fails: the run ends after the drain timeout
    holders: list[WaitingTaskHolder] = []

    def submit(event: Event, holder: WaitingTaskHolder) -> None:
        if event.id == 1:
            raise RuntimeError("cannot send")
        holders.append(holder)

    err = _run_failing([Remote("R", submit)], streams=2, threads=1, drain_timeout_s=0.05)
    assert (err.phase, err.event_id) == ("acquire", 1)
    holders[0].done()  # a late callback is harmless


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="'a' is produced by both 'A' and 'X'"):
        Process([Step("A"), _renamed(Step("X"), "X", produces=("a",))], streams=1, threads=1)
    with pytest.raises(ValueError, match=r"cycle: B -\[b\]-> C -\[c\]-> B$"):
        Process([Step("A"), Step("B", ("a", "c")), Step("C", ("b",))], streams=1, threads=1)
    with pytest.raises(ValueError, match="'A' is used twice"):
        Process([Step("A"), Step("A")], streams=1, threads=1)
    with pytest.raises(ValueError, match="streams"):
        Process([Step("A")], streams=0, threads=1)


def _renamed(module: Step, name: str, *, produces: tuple[str, ...]) -> Step:
    module.name, module.produces = name, produces
    return module


def test_holder_done_twice_raises() -> None:
    fired: list[BaseException | None] = []
    holder = WaitingTaskHolder(fired.append, label="R, event 0")
    thread = threading.Thread(target=holder.done)
    thread.start()
    thread.join(DEADLINE_S)
    with pytest.raises(RuntimeError, match="twice"):
        holder.done()
    assert fired == [None]


def test_done_inside_acquire_still_runs_produce_after_acquire() -> None:
    remote = Remote("R", lambda _, holder: holder.done())
    report = Process([remote, Step("B", ("r",))], streams=2, threads=2).run(range(5))
    assert sorted(remote.produced) == list(range(5))
    assert report.modules["R"].async_wait_s < 0.05


def test_timing_report(tmp_path: Path) -> None:
    delay_s, cpu_s, n = 0.06, 0.02, 8
    timers: list[threading.Timer] = []

    def submit(_: Event, holder: WaitingTaskHolder) -> None:
        timer = threading.Timer(delay_s, holder.done)
        timers.append(timer)
        timer.start()

    modules = [Step("Cpu", work_s=cpu_s), Remote("Infer", submit, consumes=("cpu",))]
    report = Process(modules, streams=2, threads=2).run(range(n))
    for timer in timers:
        timer.join(DEADLINE_S)
    infer, cpu = report.modules["Infer"], report.modules["Cpu"]
    assert infer.calls == cpu.calls == report.events == n
    assert (infer.kind, cpu.kind) == ("external", "producer")
    assert infer.async_wait_mean_ms >= 0.9 * delay_s * 1e3
    assert cpu.mean_ms >= cpu_s * 1e3
    assert report.events_per_s > 0
    assert report.wall_s > 0
    assert report.event_mean_ms >= (cpu_s + 0.9 * delay_s) * 1e3
    p = report.inference_share(["Infer"])
    assert 0.0 < p < 1.0
    assert p == pytest.approx(delay_s / (delay_s + cpu_s), abs=0.15)  # 0.75 when unloaded
    assert report.inference_share(["Infer", "Cpu"]) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="Nope"):
        report.inference_share(["Nope"])

    path = report.to_json(tmp_path / "timing.json")
    assert json.loads(path.read_text())["modules"]["Infer"]["calls"] == n
    assert TimingReport.from_json(path) == report

    console = Console(file=io.StringIO(), width=160)
    console.print(report.table())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(word in text for word in ("Infer", "Cpu", "ev/s"))


def test_source_and_callback_errors_fail_the_run() -> None:
    def source() -> Iterator[int]:
        yield 0
        raise OSError("truncated file")

    with pytest.raises(ProcessError, match=r"source failed on event 1: OSError: truncated") as info:
        Process([Step("A")], streams=1, threads=1).run(source())
    assert isinstance(info.value.__cause__, OSError)

    def callback(event: Event) -> None:
        raise ValueError(f"cannot write {event.id}")

    with pytest.raises(ProcessError, match="on_event_done failed on event 0"):
        Process([Step("A")], streams=1, threads=1).run(range(3), on_event_done=callback)
    assert not workflow_threads()
