"""Unit tests for :class:`pysonic.scheduling.DynamicBatcher` and, for configs without dynamic
batching, :class:`pysonic.scheduling.DefaultScheduler` (the ``make_plain`` fixture runs those
tests on both: they must behave the same).

No servers: executors are plain callables over numpy arrays that record every batch. Queue state
is made deterministic by blocking the only instance on a first ("blocker") request while the rest
are queued, then releasing it; batches are then formed from a known, full queue. Waits poll with
deadlines; the only timing assertions are lower bounds and generous upper bounds.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pysonic.errors import (
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryableError,
    UnavailableError,
)
from pysonic.scheduling import (
    DEFAULT_QUEUE_CAP,
    BatcherConfig,
    DefaultScheduler,
    DynamicBatcher,
    ExecutedBatch,
    PendingRequest,
    RequestState,
    TimeoutAction,
    make_scheduler,
)

pytestmark = pytest.mark.timeout(30)

WAIT_S = 5.0  # generous upper bound for anything that should happen "now"
LONG_DELAY_US = 10_000_000  # a queue delay no test waits for: partial batches only leave on stop()
MS = 1_000_000  # ns


# ---------------------------------------------------------------------------- helpers
def config(text: str, *, queue_cap: int = DEFAULT_QUEUE_CAP) -> BatcherConfig:
    """BatcherConfig from a config.pbtxt snippet (name and input/output are filled in)."""
    proto = text_format.Parse(
        'name: "m"\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [-1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [-1] }]\n' + text,
        model_config_pb2.ModelConfig(),
    )
    return BatcherConfig.from_model_config(proto, queue_cap=queue_cap)


_values = itertools.count()


def request(rows: int = 1, cols: int = 2, **kwargs: Any) -> PendingRequest:
    """A request whose values are unique across the test session (so outputs can be checked)."""
    base = next(_values) * 1000
    x = (np.arange(rows * cols, dtype=np.float32) + base).reshape(rows, cols)
    return PendingRequest(inputs={"x": x}, rows=rows, shape_key=x.shape[1:], **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.001)


class Executor:
    """Returns ``{"y": x * 2}`` and records each batch's input and output.

    ``block_first`` holds the first call until :attr:`gate` is set; ``block_if(x)`` holds any call
    it selects. ``transform`` replaces the computation; ``barrier`` makes each call wait for the
    other instances.
    """

    def __init__(
        self,
        *,
        block_first: bool = False,
        block_if: Callable[[np.ndarray], bool] | None = None,
        transform: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.gate = threading.Event()
        self.block_first = block_first
        self.block_if = block_if
        self.transform = transform
        self.barrier = barrier
        self.calls: list[np.ndarray] = []
        self.outputs: list[dict[str, np.ndarray]] = []
        self.finished = 0
        self._cond = threading.Condition()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self._cond:
            self.calls.append(x)
            n = len(self.calls)
            self._cond.notify_all()
        blocks = (self.block_first and n == 1) or (self.block_if is not None and self.block_if(x))
        if blocks and not self.gate.wait(WAIT_S * 2):
            raise TimeoutError("test executor was never released")
        if self.barrier is not None:
            self.barrier.wait()
        out = self.transform(x) if self.transform is not None else {"y": x * 2}
        with self._cond:
            self.outputs.append(out)
            self.finished += 1
            self._cond.notify_all()
        return out

    @property
    def rows(self) -> list[int]:
        with self._cond:
            return [x.shape[0] for x in self.calls]

    def wait_calls(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, WAIT_S), self.calls

    def wait_finished(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.finished >= n, WAIT_S), self.finished


class Deliveries:
    """The ``deliver`` callback: records each call's requests and when each was delivered."""

    def __init__(self, on_deliver: Callable[[list[PendingRequest]], None] | None = None) -> None:
        self.groups: list[list[PendingRequest]] = []
        self.at_ns: dict[int, int] = {}
        self.on_deliver = on_deliver
        self._cond = threading.Condition()

    def __call__(self, done: list[PendingRequest]) -> None:
        now = time.monotonic_ns()
        with self._cond:
            self.groups.append(list(done))
            for r in done:
                self.at_ns[id(r)] = now
            self._cond.notify_all()
        if self.on_deliver is not None:
            self.on_deliver(done)

    @property
    def requests(self) -> list[PendingRequest]:
        with self._cond:
            return [r for g in self.groups for r in g]

    def wait_for(self, n: int, timeout: float = WAIT_S) -> list[PendingRequest]:
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(map(len, self.groups)) >= n, timeout)
            assert ok, f"{sum(map(len, self.groups))} of {n} requests delivered"
        return self.requests


def assert_ok(req: PendingRequest) -> None:
    """The request succeeded and got exactly its own rows back."""
    assert req.error is None, req.error
    assert req.state is RequestState.DONE
    assert req.outputs is not None
    np.testing.assert_array_equal(req.outputs["y"], req.inputs["x"] * 2)


Factory = Callable[..., tuple[DynamicBatcher, Deliveries]]


@pytest.fixture
def make() -> Iterator[Factory]:
    """Build and start a batcher; on teardown release every executor and stop it."""
    made: list[tuple[Any, list[Executor]]] = []

    def factory(
        cfg: BatcherConfig,
        executors: list[Executor],
        *,
        deliveries: Deliveries | None = None,
        on_execution: Callable[[ExecutedBatch], None] | None = None,
        cls: type = DynamicBatcher,
    ) -> tuple[Any, Deliveries]:
        deliveries = deliveries or Deliveries()
        batcher = cls(cfg, executors, deliveries, on_execution=on_execution)
        made.append((batcher, executors))
        batcher.start()
        return batcher, deliveries

    yield factory
    for batcher, executors in made:
        for ex in executors:
            ex.gate.set()
        batcher.stop(timeout=WAIT_S)


@pytest.fixture(
    params=[DynamicBatcher, DefaultScheduler], ids=["dynamic-batcher", "default-scheduler"]
)
def make_plain(request: pytest.FixtureRequest, make: Factory) -> Factory:
    """For configs without ``dynamic_batching``: each test runs on both schedulers."""
    return functools.partial(make, cls=request.param)


def block_with(batcher: Any, ex: Executor, rows: int = 1) -> PendingRequest:
    """Submit a blocker request and wait until the (single) instance is executing it."""
    blocker = request(rows)
    batcher.submit(blocker)
    ex.wait_calls(1)
    assert batcher.pending_count == 0
    return blocker


# ---------------------------------------------------------------------------- config
def test_config_from_model_config() -> None:
    cfg = config(
        """
        max_batch_size: 8
        dynamic_batching {
          preferred_batch_size: [4, 2, 4]
          max_queue_delay_microseconds: 250
          preserve_ordering: true
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 7
                                 allow_timeout_override: true max_queue_size: 5 }
          priority_queue_policy { key: 1 value { max_queue_size: 1 } }
        }
        """
    )
    assert cfg.dynamic
    assert cfg.max_batch_size == 8
    assert cfg.preferred_batch_sizes == (2, 4)
    assert cfg.target_batch_size == 4
    assert cfg.max_queue_delay_ns == 250_000
    assert cfg.preserve_ordering
    assert (cfg.priority_levels, cfg.default_priority_level) == (3, 2)
    assert [cfg.level_of(p) for p in (0, 1, 2, 3)] == [2, 1, 2, 3]
    default = cfg.policy_for(2)
    assert default.timeout_action is TimeoutAction.DELAY
    assert default.default_timeout_ns == 7_000
    assert default.allow_timeout_override
    assert default.max_queue_size == 5
    assert cfg.policy_for(1).max_queue_size == 1
    assert cfg.policy_for(1).timeout_action is TimeoutAction.REJECT


def test_config_without_dynamic_batching_or_batching() -> None:
    assert not config("max_batch_size: 8").dynamic
    assert not config("max_batch_size: 0\ndynamic_batching { }").dynamic
    unbounded = config("max_batch_size: 8\ndynamic_batching { }", queue_cap=3)
    assert unbounded.dynamic
    assert unbounded.target_batch_size == 8
    assert unbounded.policy_for(1).max_queue_size == 3


def test_batcher_needs_an_executor() -> None:
    with pytest.raises(ValueError, match="at least one executor"):
        DynamicBatcher(config("max_batch_size: 8"), [], Deliveries())


# ---------------------------------------------------------------------------- preferred sizes
def test_preferred_size_is_sent_without_waiting(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [4] "
        f"max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=4)  # a preferred size: runs at once despite the long delay
    queued = [request() for _ in range(6)]
    for r in queued:
        batcher.submit(r)
    assert batcher.pending_count == 6
    assert batcher.in_flight == 7
    ex.gate.set()

    deliveries.wait_for(5)  # blocker + a batch of 4, long before the 10 s delay
    assert ex.rows == [4, 4]
    assert [len(g) for g in deliveries.groups] == [1, 4]
    assert deliveries.groups[1] == queued[:4]
    assert batcher.pending_count == 2

    assert batcher.stop(timeout=WAIT_S) == 0  # stop sends the partial batch at once
    assert ex.rows == [4, 4, 2]
    assert deliveries.groups[2] == queued[4:]
    for r in queued:
        assert_ok(r)


def test_rest_is_sent_after_max_queue_delay(make: Factory) -> None:
    delay_ns = 100 * MS
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [4] "
        f"max_queue_delay_microseconds: {delay_ns // 1000} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=4)
    queued = [request() for _ in range(6)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(7)
    assert ex.rows == [4, 4, 2]
    assert [len(g) for g in deliveries.groups] == [1, 4, 2]
    for r in queued[4:]:
        assert r.batch is not None
        assert r.batch.rows == 2
        assert r.queue_ns >= delay_ns
        assert r.queue_ns < delay_ns + int(WAIT_S * 1e9)
    for r in queued:
        assert_ok(r)


def test_largest_preferred_prefix_is_chosen(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [2, 3, 5] "
        f"max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=5)
    queued = [request() for _ in range(4)]  # prefixes of 1, 2, 3, 4 rows: 3 is the best
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(4)
    assert ex.rows == [5, 3]
    assert batcher.pending_count == 1
    assert batcher.stop(timeout=WAIT_S) == 0
    assert ex.rows == [5, 3, 1]
    for r in queued:
        assert_ok(r)


def test_preferred_prefix_beats_a_larger_batch_past_the_largest_preferred(make: Factory) -> None:
    # Queued rows 1, 1, 3 with preferred [2, 4]: the prefixes hold 1, 2 and 5 rows. Triton sends
    # the largest preferred batch it can form (2), not the 5 rows that overshoot 4.
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [2, 4] "
        f"max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=4)
    queued = [request(1), request(1), request(3)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(3)
    assert ex.rows == [4, 2]
    assert batcher.pending_count == 1
    assert batcher.stop(timeout=WAIT_S) == 0
    assert ex.rows == [4, 2, 3]
    for r in queued:
        assert_ok(r)


def test_rows_are_counted_not_requests(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [6] "
        f"max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=6)
    queued = [request(3) for _ in range(3)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(3)  # two requests of 3 rows form the preferred 6 at once
    assert ex.rows == [6, 6]
    assert deliveries.groups[1] == queued[:2]
    assert queued[0].batch is queued[1].batch
    assert (queued[0].batch.rows, queued[0].batch.request_count) == (6, 2)
    assert batcher.stop(timeout=WAIT_S) == 0
    assert ex.rows == [6, 6, 3]
    for r in queued:
        assert_ok(r)
        assert r.outputs["y"].shape == (3, 2)


# ---------------------------------------------------------------------------- queue delay
def test_lone_request_is_held_for_the_queue_delay(make: Factory) -> None:
    delay_ns = 150 * MS
    delay_us = delay_ns // 1000
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"
    )
    ex = Executor()
    batcher, deliveries = make(cfg, [ex])
    r = request()
    batcher.submit(r)
    deliveries.wait_for(1)
    assert_ok(r)
    assert r.queue_ns >= delay_ns
    assert deliveries.at_ns[id(r)] - r.enqueue_ns < delay_ns + int(WAIT_S * 1e9)
    assert ex.rows == [1]


def test_zero_queue_delay_runs_a_lone_request_at_once(make: Factory) -> None:
    ex = Executor()
    batcher, deliveries = make(config("max_batch_size: 8\ndynamic_batching { }"), [ex])
    r = request()
    batcher.submit(r)
    deliveries.wait_for(1)
    assert_ok(r)
    assert r.queue_ns < 500 * MS
    assert ex.rows == [1]


# ---------------------------------------------------------------------------- max_batch_size
def test_max_batch_size_is_never_exceeded(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 4\ndynamic_batching {{ max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=4)
    sizes = [3, 2, 1, 2, 4, 1]
    queued = [request(n) for n in sizes]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    # 3 | 2+1 | 2 | 4 are sent at once: each next request would overflow 4 (or 4 is reached).
    deliveries.wait_for(6)
    assert ex.rows == [4, 3, 3, 2, 4]
    assert [[r.rows for r in g] for g in deliveries.groups[1:]] == [[3], [2, 1], [2], [4]]
    assert batcher.pending_count == 1
    assert batcher.stop(timeout=WAIT_S) == 0
    assert ex.rows[-1] == 1
    assert max(ex.rows) <= 4
    for r in queued:
        assert_ok(r)


# ---------------------------------------------------------------------------- shapes and outputs
def test_different_shapes_are_never_batched_together(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=8)
    queued = [request(cols=2), request(cols=2), request(cols=3), request(cols=2), request(cols=3)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(5)  # 2+2 | 3 | 2 go at once; the last one waits for more of its shape
    assert batcher.pending_count == 1
    assert batcher.stop(timeout=WAIT_S) == 0
    groups = deliveries.groups[1:]
    assert [[r.shape_key for r in g] for g in groups] == [[(2,), (2,)], [(3,)], [(2,)], [(3,)]]
    assert [x.shape for x in ex.calls[1:]] == [(2, 2), (1, 3), (1, 2), (1, 3)]
    for r in queued:
        assert_ok(r)


def test_each_request_gets_views_of_its_own_rows(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [6] "
        f"max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex, rows=6)
    queued = [request(1), request(2), request(3)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()

    deliveries.wait_for(4)
    assert ex.rows == [6, 6]
    batch_out = ex.outputs[1]["y"]
    offset = 0
    for r in queued:
        assert_ok(r)
        y = r.outputs["y"]
        assert y.shape == (r.rows, 2)
        assert np.shares_memory(y, batch_out)
        np.testing.assert_array_equal(y, batch_out[offset : offset + r.rows])
        offset += r.rows
    for a, b in itertools.combinations(queued, 2):
        assert not np.shares_memory(a.outputs["y"], b.outputs["y"])
    # a batch of one is executed on the request's own arrays and gets the output as is
    assert ex.calls[0] is blocker.inputs["x"]
    assert blocker.outputs["y"] is ex.outputs[0]["y"]


def test_without_dynamic_batching_every_request_runs_alone(make_plain: Factory) -> None:
    ex = Executor(block_first=True)
    batcher, deliveries = make_plain(config("max_batch_size: 8"), [ex])
    blocker = block_with(batcher, ex)
    queued = [request() for _ in range(4)]
    for r in queued:
        batcher.submit(r)
    assert batcher.pending_count == 4
    ex.gate.set()

    deliveries.wait_for(5)
    assert ex.rows == [1] * 5
    assert [len(g) for g in deliveries.groups] == [1] * 5
    assert deliveries.requests == [blocker, *queued]
    for r, x in zip([blocker, *queued], ex.calls, strict=True):
        assert x is r.inputs["x"]
        assert_ok(r)
        assert r.batch.request_count == 1


# ---------------------------------------------------------------------------- queue size
def test_full_queue_is_rejected_at_once(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 8\ndynamic_batching { default_queue_policy { max_queue_size: 2 } }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex)  # running requests do not count against the queue
    queued = [request(), request()]
    for r in queued:
        batcher.submit(r)
    overflow = request()
    started = time.monotonic()
    with pytest.raises(ResourceExhaustedError, match="full") as excinfo:
        batcher.submit(overflow)
    assert time.monotonic() - started < 0.5
    assert isinstance(excinfo.value, RetryableError)
    assert batcher.pending_count == 2
    ex.gate.set()

    deliveries.wait_for(3)
    assert overflow not in deliveries.requests
    for r in queued:
        assert_ok(r)
    batcher.submit(overflow)  # room again once the queue drained
    deliveries.wait_for(4)
    assert_ok(overflow)


def test_unbounded_queue_is_capped(make_plain: Factory) -> None:
    cfg = config("max_batch_size: 8", queue_cap=1)
    ex = Executor(block_first=True)
    batcher, _ = make_plain(cfg, [ex])
    block_with(batcher, ex)
    batcher.submit(request())
    with pytest.raises(ResourceExhaustedError):
        batcher.submit(request())


# ---------------------------------------------------------------------------- queue timeouts
def test_reject_timeout_fails_a_queued_request(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 8\ndynamic_batching { default_queue_policy "
        "{ timeout_action: REJECT default_timeout_microseconds: 50000 } }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex)
    late = request()
    batcher.submit(late)

    deliveries.wait_for(1)  # while the instance is still blocked
    assert deliveries.requests == [late]
    assert isinstance(late.error, UnavailableError)
    assert "timeout" in str(late.error)
    assert late.outputs is None
    assert late.state is RequestState.DONE
    assert deliveries.at_ns[id(late)] - late.enqueue_ns >= 50 * MS
    assert batcher.pending_count == 0
    assert batcher.in_flight == 1

    ex.gate.set()
    deliveries.wait_for(2)
    assert_ok(blocker)
    assert ex.rows == [1]


def test_timeout_override_is_used_when_allowed(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ default_queue_policy {{ allow_timeout_override: "
        f"true default_timeout_microseconds: {LONG_DELAY_US} }} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex)
    short = request(timeout_ns=50 * MS)
    default = request()
    batcher.submit(short)
    batcher.submit(default)

    deliveries.wait_for(1)
    assert deliveries.requests == [short]
    assert isinstance(short.error, UnavailableError)
    assert deliveries.at_ns[id(short)] - short.enqueue_ns >= 50 * MS
    assert batcher.pending_count == 1  # the other one keeps the 10 s default

    ex.gate.set()
    deliveries.wait_for(3)
    assert_ok(blocker)
    assert_ok(default)


def test_timeout_override_is_ignored_when_not_allowed(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 8\ndynamic_batching { default_queue_policy { allow_timeout_override: "
        "false default_timeout_microseconds: 150000 } }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex)
    shorter = request(timeout_ns=10 * MS)
    longer = request(timeout_ns=60_000 * MS)
    batcher.submit(shorter)
    batcher.submit(longer)

    deliveries.wait_for(2)  # both at the policy's 150 ms, neither at its own timeout
    for r in (shorter, longer):
        assert isinstance(r.error, UnavailableError)
        assert "150000 us" in str(r.error)
        assert deliveries.at_ns[id(r)] - r.enqueue_ns >= 150 * MS


def test_delay_timeout_moves_a_request_behind_the_others(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 1\ndynamic_batching { default_queue_policy { timeout_action: DELAY "
        "allow_timeout_override: true } }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex)
    delayed = request(timeout_ns=30 * MS)
    others = [request(), request()]
    for r in [delayed, *others]:
        batcher.submit(r)
    wait_until(lambda: delayed.state is RequestState.DELAYED)
    assert batcher.pending_count == 3  # delayed, not dropped
    ex.gate.set()

    deliveries.wait_for(4)
    order = [blocker, *others, delayed]
    assert [x is r.inputs["x"] for x, r in zip(ex.calls, order, strict=True)] == [True] * 4
    assert deliveries.requests == order
    for r in order:
        assert_ok(r)


# ---------------------------------------------------------------------------- priorities
def test_higher_priority_level_runs_first(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 1\ndynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex)
    low = [request(priority=2), request(priority=2)]
    default = request(priority=0)
    high = request(priority=1)
    for r in [*low, default, high]:
        batcher.submit(r)
    assert (default.level, high.level, low[0].level) == (2, 1, 2)
    ex.gate.set()

    deliveries.wait_for(5)
    order = [blocker, high, *low, default]
    assert [x is r.inputs["x"] for x, r in zip(ex.calls, order, strict=True)] == [True] * 5
    for r in order:
        assert_ok(r)


def test_queue_size_is_per_priority_level(make: Factory) -> None:
    cfg = config(
        "max_batch_size: 8\ndynamic_batching { priority_levels: 2 default_priority_level: 2 "
        "priority_queue_policy { key: 1 value { max_queue_size: 1 } } }"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex)
    batcher.submit(request(priority=1))
    with pytest.raises(ResourceExhaustedError, match="priority level 1"):
        batcher.submit(request(priority=1))
    for _ in range(3):
        batcher.submit(request(priority=2))
    batcher.submit(request())  # default level 2
    assert batcher.pending_count == 5
    ex.gate.set()
    deliveries.wait_for(6)
    for r in deliveries.requests:
        assert_ok(r)


# ---------------------------------------------------------------------------- instances, ordering
ORDERING = "max_batch_size: 1\ndynamic_batching { preserve_ordering: %s }"


def _slow_first(make: Factory, preserve: bool) -> tuple[Executor, Deliveries, list[PendingRequest]]:
    """Two instances; the first request blocks its instance, the next two run on the other."""
    reqs = [request(), request(), request()]
    slow = reqs[0].inputs["x"]
    ex = Executor(block_if=lambda x: x is slow)
    batcher, deliveries = make(config(ORDERING % str(preserve).lower()), [ex, ex])
    for r in reqs:
        batcher.submit(r)
    ex.wait_finished(2)  # the fast two are done; the slow one still holds its instance
    wait_until(lambda: reqs[1].state is RequestState.DONE and reqs[2].state is RequestState.DONE)
    assert reqs[0].state is RequestState.RUNNING
    return ex, deliveries, reqs


def test_preserve_ordering_delivers_in_submit_order(make: Factory) -> None:
    ex, deliveries, reqs = _slow_first(make, preserve=True)
    assert deliveries.requests == []
    ex.gate.set()
    deliveries.wait_for(3)
    assert deliveries.requests == reqs
    for r in reqs:
        assert_ok(r)


def test_without_preserve_ordering_fast_requests_are_delivered_first(make: Factory) -> None:
    ex, deliveries, reqs = _slow_first(make, preserve=False)
    deliveries.wait_for(2)
    assert deliveries.requests == reqs[1:]
    ex.gate.set()
    deliveries.wait_for(3)
    assert deliveries.requests == [*reqs[1:], reqs[0]]


def test_instances_run_in_parallel(make_plain: Factory) -> None:
    barrier = threading.Barrier(2, timeout=WAIT_S)  # breaks unless both instances are busy at once
    executors = [Executor(barrier=barrier), Executor(barrier=barrier)]
    batcher, deliveries = make_plain(config("max_batch_size: 8"), executors)
    reqs = [request(), request()]
    for r in reqs:
        batcher.submit(r)
    deliveries.wait_for(2)
    for r in reqs:
        assert_ok(r)
    assert [len(ex.calls) for ex in executors] == [1, 1]


# ---------------------------------------------------------------------------- executor failures
def test_pysonic_error_from_the_executor_is_delivered_as_is(make_plain: Factory) -> None:
    err = InvalidArgumentError("input 'x' is bad")

    def fail(x: np.ndarray) -> dict[str, np.ndarray]:
        raise err

    ex = Executor(transform=fail)
    batcher, deliveries = make_plain(config("max_batch_size: 8"), [ex])
    r = request()
    batcher.submit(r)
    deliveries.wait_for(1)
    assert r.error is err
    assert r.outputs is None
    assert r.state is RequestState.DONE


def test_unexpected_exception_becomes_internal_and_the_batcher_keeps_serving(
    make_plain: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    def fail_once(x: np.ndarray) -> dict[str, np.ndarray]:
        if len(ex.calls) == 1:
            raise ValueError("boom")
        return {"y": x * 2}

    ex = Executor(transform=fail_once)
    executions: list[ExecutedBatch] = []
    batcher, deliveries = make_plain(
        config("max_batch_size: 8"), [ex], on_execution=executions.append
    )
    first = request()
    batcher.submit(first)
    deliveries.wait_for(1)
    assert isinstance(first.error, InternalError)
    assert "ValueError: boom" in str(first.error)
    assert first.outputs is None
    assert any("failed on a batch" in rec.message for rec in caplog.records)

    second = request()
    batcher.submit(second)
    deliveries.wait_for(2)
    assert_ok(second)
    assert [e.rows for e in executions] == [1]  # only the successful batch is reported


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda x: {"y": (x * 2)[:-1]}, id="too-few-rows"),
        pytest.param(lambda x: {"y": np.concatenate([x, x])}, id="too-many-rows"),
        pytest.param(lambda x: {"y": np.float32(1.0) * np.ones(())}, id="scalar"),
    ],
)
def test_output_with_wrong_batch_rows_is_internal(
    make: Factory, transform: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> None:
    cfg = config("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [2] }")
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    block_with(batcher, ex, rows=2)
    # only the batch of several (the second call) gets the broken output
    ex.transform = lambda x: transform(x) if len(ex.calls) > 1 else {"y": x * 2}
    pair = [request(), request()]
    for r in pair:
        batcher.submit(r)
    ex.gate.set()
    deliveries.wait_for(3)
    assert ex.rows == [2, 2]
    for r in pair:
        assert isinstance(r.error, InternalError)
        assert "rows on the batch axis" in str(r.error)
        assert r.outputs is None


# ---------------------------------------------------------------------------- ExecutedBatch
def test_executed_batches_are_reported_once_with_ordered_timestamps(make: Factory) -> None:
    cfg = config("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [3] }")
    ex = Executor(block_first=True)
    executions: list[ExecutedBatch] = []
    batcher, deliveries = make(cfg, [ex], on_execution=executions.append)
    blocker = block_with(batcher, ex, rows=3)
    queued = [request(2), request(1)]
    for r in queued:
        batcher.submit(r)
    ex.gate.set()
    deliveries.wait_for(3)

    assert [(e.rows, e.request_count) for e in executions] == [(3, 1), (3, 2)]
    assert blocker.batch is executions[0]
    assert queued[0].batch is executions[1]
    assert queued[1].batch is executions[1]
    for e in executions:
        assert 0 < e.start_ns <= e.input_end_ns <= e.infer_end_ns <= e.end_ns
        assert min(e.compute_input_ns, e.compute_infer_ns, e.compute_output_ns) >= 0
    assert executions[0].end_ns <= executions[1].start_ns
    for r in [blocker, *queued]:
        assert r.enqueue_ns <= r.batch.start_ns
        assert r.queue_ns >= 0
    assert queued[0].queue_ns > 0  # it waited behind the blocker


# ---------------------------------------------------------------------------- stop()
def test_stop_lets_queued_and_running_requests_finish(make: Factory) -> None:
    cfg = config(
        f"max_batch_size: 8\ndynamic_batching {{ max_queue_delay_microseconds: {LONG_DELAY_US} }}"
    )
    ex = Executor(block_first=True)
    batcher, deliveries = make(cfg, [ex])
    blocker = block_with(batcher, ex, rows=8)
    queued = [request() for _ in range(3)]
    for r in queued:
        batcher.submit(r)

    result: list[int] = []
    stopper = threading.Thread(target=lambda: result.append(batcher.stop(timeout=WAIT_S)))
    started = time.monotonic()
    stopper.start()
    ex.gate.set()
    stopper.join(WAIT_S * 2)
    assert not stopper.is_alive()
    assert result == [0]
    assert time.monotonic() - started < WAIT_S  # the 10 s queue delay is not waited for
    assert ex.rows == [8, 3]
    for r in [blocker, *queued]:
        assert_ok(r)

    with pytest.raises(UnavailableError, match="not accepting"):
        batcher.submit(request())
    assert len(deliveries.requests) == 4


def test_stop_cancels_queued_requests_behind_a_stuck_executor(make_plain: Factory) -> None:
    ex = Executor(block_first=True)

    def release_after_cancel(done: list[PendingRequest]) -> None:
        if any(isinstance(r.error, UnavailableError) for r in done):
            ex.gate.set()  # so the instance thread can end and stop() need not wait for it

    deliveries = Deliveries(on_deliver=release_after_cancel)
    batcher, _ = make_plain(config("max_batch_size: 8"), [ex], deliveries=deliveries)
    blocker = block_with(batcher, ex)
    queued = [request() for _ in range(3)]
    for r in queued:
        batcher.submit(r)

    started = time.monotonic()
    assert batcher.stop(timeout=0.2) == 3
    assert 0.2 <= time.monotonic() - started < 0.2 + WAIT_S
    for r in queued:
        assert isinstance(r.error, UnavailableError)
        assert "unloaded" in str(r.error)
        assert r.outputs is None
        assert r.state is RequestState.DONE
    assert deliveries.groups[0] == queued
    assert batcher.pending_count == 0
    deliveries.wait_for(4)
    assert_ok(blocker)
    assert ex.rows == [1]
    with pytest.raises(UnavailableError):
        batcher.submit(request())


# ---------------------------------------------------------------------------- scheduler choice
def test_make_scheduler_follows_the_config() -> None:
    def pick(text: str) -> type:
        return type(make_scheduler(config(text), [Executor()], Deliveries()))

    assert pick("max_batch_size: 8") is DefaultScheduler
    assert pick("max_batch_size: 0\ndynamic_batching { }") is DefaultScheduler
    assert pick("max_batch_size: 8\ndynamic_batching { }") is DynamicBatcher


def test_cancel_drops_a_queued_request(make_plain: Factory) -> None:
    ex = Executor(block_first=True)
    batcher, deliveries = make_plain(config("max_batch_size: 8"), [ex])
    blocker = block_with(batcher, ex)
    gone, kept = request(), request()
    batcher.submit(gone)
    batcher.submit(kept)
    assert batcher.cancel(gone)
    assert not batcher.cancel(blocker)  # running: left to finish
    assert batcher.pending_count == 1
    ex.gate.set()
    deliveries.wait_for(2)
    assert deliveries.requests == [blocker, kept]
    assert_ok(kept)
    assert gone.outputs is None
    assert ex.rows == [1, 1]


def test_stop_lets_queued_requests_finish_without_batching(make_plain: Factory) -> None:
    first, second = Executor(block_first=True), Executor(block_first=True)
    second.gate = first.gate  # whichever instance takes the blocker holds it until the gate
    batcher, deliveries = make_plain(config("max_batch_size: 8"), [first, second])
    blocker = request()
    batcher.submit(blocker)
    wait_until(lambda: len(first.calls) + len(second.calls) == 1)
    queued = [request() for _ in range(5)]
    for r in queued:
        batcher.submit(r)
    stopper = threading.Thread(target=lambda: batcher.stop(timeout=WAIT_S))
    stopper.start()
    first.gate.set()
    stopper.join(WAIT_S * 2)
    assert not stopper.is_alive()
    deliveries.wait_for(6)
    for r in [blocker, *queued]:
        assert_ok(r)
    assert batcher.in_flight == 0
