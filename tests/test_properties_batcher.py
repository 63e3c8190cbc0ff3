"""Property-based test (hypothesis) of the schedulers: whatever the config and however requests
of random sizes interleave (several submitting threads, priorities, mixed row shapes, requests
cancelled while queued), each request gets exactly its own rows back, exactly once.

The model is real: an ONNX graph (``y = 2x + 1``, ``s = row sums of x``) run by the onnxruntime
backend, one session per instance thread; every request's values are unique integers, so any
row that went to the wrong request, was dropped, duplicated or reordered shows up exactly.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from conftest import OPSET
from pysonic.backends.base import InstanceSpec
from pysonic.backends.onnxruntime import OrtBackend
from pysonic.scheduling import BatcherConfig, PendingRequest, make_scheduler

pytestmark = pytest.mark.timeout(300)
MAX_INSTANCES = 3


def _row_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
    ]
    inits = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1]),
        ],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[OrtBackend]]:
    version = tmp_path_factory.mktemp("rows") / "1"
    version.mkdir()
    onnx.save(_row_model(), version / "model.onnx")
    config = model_config_pb2.ModelConfig(name="rows", backend="onnxruntime")
    made = [
        OrtBackend(InstanceSpec("rows", 1, version, config, instance_index=i))
        for i in range(MAX_INSTANCES)
    ]
    yield made
    for b in made:
        b.close()


_values = itertools.count()


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    max_batch = draw(st.integers(1, 12))
    dynamic = draw(st.booleans())
    return {
        "max_batch": max_batch,
        "dynamic": dynamic,
        "preferred": draw(st.lists(st.integers(1, max_batch), max_size=3, unique=True)),
        "delay_us": draw(st.sampled_from([0, 100, 1000, 3000])),
        "instances": draw(st.integers(1, MAX_INSTANCES)),
        "preserve_ordering": draw(st.booleans()),
        "levels": draw(st.integers(0, 3)),
        "requests": draw(
            st.lists(
                st.tuples(
                    st.integers(1, max_batch),  # rows
                    st.sampled_from([1, 3]),  # columns: requests of other shapes never share
                    st.integers(0, 4),  # priority (0 and past the last level: the default)
                    st.integers(0, 3),  # submitting thread
                    st.booleans() if dynamic else st.just(False),  # cancel it after submitting
                ),
                min_size=1,
                max_size=40,
            )
        ),
    }


def _config(s: dict) -> BatcherConfig:
    cfg = model_config_pb2.ModelConfig(name="rows", max_batch_size=s["max_batch"])
    if s["dynamic"]:
        db = cfg.dynamic_batching
        db.preferred_batch_size.extend(s["preferred"])
        db.max_queue_delay_microseconds = s["delay_us"]
        db.preserve_ordering = s["preserve_ordering"]
        db.priority_levels = s["levels"]
        if s["levels"]:
            db.default_priority_level = 1
    return BatcherConfig.from_model_config(cfg)


@given(scenarios())
def test_every_request_gets_exactly_its_own_rows(backends: list[OrtBackend], s: dict) -> None:
    delivered: list[PendingRequest] = []
    done = threading.Condition()

    def deliver(reqs: list[PendingRequest]) -> None:
        with done:
            delivered.extend(reqs)
            done.notify_all()

    config = _config(s)
    executors = [b.execute for b in backends[: s["instances"]]]
    scheduler = make_scheduler(config, executors, deliver, name="rows")
    scheduler.start()
    requests = []
    for rows, cols, priority, thread, cancel in s["requests"]:
        base = next(_values) % 50_000 * 64  # exact in float32, unique within an example
        x = (np.arange(rows * cols, dtype=np.float32) + base).reshape(rows, cols)
        req = PendingRequest(inputs={"x": x}, rows=rows, priority=priority, shape_key=(cols,))
        requests.append((req, thread, cancel))
    dropped: set[int] = set()
    start = threading.Barrier(4)

    def submitter(me: int) -> None:
        start.wait()
        for req, thread, cancel in requests:
            if thread != me:
                continue
            scheduler.submit(req)
            if cancel and scheduler.cancel(req):
                dropped.add(id(req))

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        expected = len(requests) - len(dropped)
        with done:
            assert done.wait_for(lambda: len(delivered) >= expected, 30), (
                f"{len(delivered)} of {expected} requests delivered"
            )
        time.sleep(0.01)  # a duplicate delivery would arrive now
    finally:
        scheduler.stop(10)
    ids = [id(r) for r in delivered]
    assert len(ids) == len(set(ids)), "a request was delivered twice"
    assert set(ids) == {id(r) for r, _, _ in requests} - dropped
    batches: dict[int, list[PendingRequest]] = {}
    for r in delivered:
        assert r.error is None, r.error
        x = r.inputs["x"]
        np.testing.assert_array_equal(r.outputs["y"], 2 * x + 1)
        np.testing.assert_array_equal(r.outputs["s"], x.sum(axis=1, keepdims=True))
        batches.setdefault(id(r.batch), []).append(r)
    for members in batches.values():
        assert sum(m.rows for m in members) == members[0].batch.rows <= s["max_batch"]
        assert len({m.shape_key for m in members}) == 1, "rows of different shapes batched"
    if s["dynamic"] and s["preserve_ordering"]:
        seqs = [r.seq for r in delivered]
        assert seqs == sorted(seqs), "responses left out of arrival order"


def test_a_dropped_request_is_never_delivered_with_preserve_ordering() -> None:
    """Found by the property test above: with ``preserve_ordering`` a request cancelled while
    queued was kept in the ordering buffer and then delivered like a finished one."""
    gate = threading.Event()

    def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)  # the first batch holds the only instance while the rest queue up
        return {"y": inputs["x"] * 2}

    delivered: list[PendingRequest] = []
    cfg = model_config_pb2.ModelConfig(name="m", max_batch_size=1)
    cfg.dynamic_batching.preserve_ordering = True
    scheduler = make_scheduler(BatcherConfig.from_model_config(cfg), [execute], delivered.extend)
    scheduler.start()
    reqs = [PendingRequest(inputs={"x": np.full((1, 1), i, np.float32)}) for i in range(3)]
    try:
        for r in reqs:
            scheduler.submit(r)
        deadline = time.monotonic() + 10
        while scheduler.pending_count != 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert scheduler.cancel(reqs[1])
        gate.set()
        while len(delivered) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # a wrong delivery of the dropped request would arrive now
    finally:
        gate.set()
        scheduler.stop(10)
    assert delivered == [reqs[0], reqs[2]]
    assert delivered[1].outputs["y"][0, 0] == 4.0
