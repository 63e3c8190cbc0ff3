"""Exactly-once at the workflow level: three ``pysonic serve`` processes, the client's balancer
and retries, and a CMSSW-like workflow (ExternalWork inference + a downstream producer). One
server is killed with SIGKILL while events are in flight; every event must still produce its
outputs exactly once (none lost, none duplicated, checked by event id), and each output must be
the event's own (compared with direct onnxruntime inference).

Retries may run one request on two servers (the killed server may have computed it before the
connection dropped): execution is at-least-once; what the workflow sees, one response per call
and one ``produce`` per event, is exactly-once."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import build_repository
from pysonic.client import (
    ClientMetrics,
    ServerEntry,
    SiteConfig,
    SonicClient,
    SonicConfig,
    connect,
)
from pysonic.server.process import ServerProcess
from pysonic.workflow import Event, ExternalWork, Process, Producer, WaitingTaskHolder

pytestmark = pytest.mark.timeout(240)


class Tag(ExternalWork):
    """acquire: send the event's features to the servers; produce: put the probabilities."""

    produces = ("probs",)

    def __init__(self, client: SonicClient) -> None:
        super().__init__()
        self.client = client
        self.calls: Counter[int] = Counter()

    def acquire(self, event: Event, holder: WaitingTaskHolder) -> None:
        future = self.client.infer_async({"x": event.payload})

        def finished(f: concurrent.futures.Future) -> None:
            exc = f.exception()
            if exc is None:
                event.put("outputs", f.result())
            holder.done(exc)

        future.add_done_callback(finished)

    def produce(self, event: Event) -> None:
        self.calls[event.id] += 1
        event.put("probs", event.get("outputs")["probs"])


class Write(Producer):
    """The event's output, written once per event id (a second write would be a duplicate)."""

    consumes = ("probs",)
    produces = ("written",)

    def __init__(self) -> None:
        super().__init__()
        self.out: dict[int, np.ndarray] = {}
        self.writes: Counter[int] = Counter()

    def produce(self, event: Event) -> None:
        self.writes[event.id] += 1
        self.out[event.id] = np.array(event.get("probs"))
        event.put("written", True)


@pytest.mark.slow
def test_kill_one_of_three_servers_mid_workflow(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo")
    for name in ("sleepy", "limited"):  # their test backend lives in the pytest process only
        (repo / name / "config.pbtxt").unlink()
    servers = [ServerProcess(repo, models=["dense"]) for _ in range(3)]
    try:
        for s in servers:
            s.start()
        rng = np.random.default_rng(11)
        n = 600
        payloads = [rng.normal(size=(1 + i % 4, 16)).astype(np.float32) for i in range(n)]
        site = SiteConfig(servers=tuple(ServerEntry.parse(s.grpc_url) for s in servers))
        killed_url = servers[0].grpc_url
        metrics = ClientMetrics()
        done: Counter[int] = Counter()

        def on_done(event: Event) -> None:
            done[event.id] += 1
            if sum(done.values()) == n // 4:
                assert servers[0].proc is not None
                servers[0].proc.kill()  # SIGKILL while ~16 events are in flight

        config = SonicConfig("dense", allowed_tries=3, timeout=20, mode="async")
        with connect(config, site, metrics=metrics) as client:
            tag, write = Tag(client), Write()
            Process([tag, write], streams=16, threads=2).run(payloads, on_event_done=on_done)
        assert servers[0].proc is not None
        assert servers[0].proc.poll() is not None  # it really died
    finally:
        for s in servers:
            s.stop()

    ids = set(range(n))
    assert set(done) == ids
    assert set(done.values()) == {1}  # every event finished once
    assert set(tag.calls) == ids
    assert set(tag.calls.values()) == {1}  # one produce per event: none lost, none duplicated
    assert set(write.writes.values()) == {1}
    session = ort.InferenceSession(str(repo / "dense" / "1" / "model.onnx"))
    for i, x in enumerate(payloads):  # each event got its own outputs
        (expected,) = session.run(["probs"], {"x": x})
        np.testing.assert_allclose(write.out[i], expected, rtol=1e-5, atol=1e-6)
    retries = metrics.value("pysonic_client_retries_total", model="dense")
    assert retries >= 1  # the kill hit requests in flight, and they were re-sent
    killed_ok = metrics.value(
        "pysonic_client_requests_total", model="dense", server=killed_url, outcome="ok"
    )
    assert killed_ok > 0  # the killed server had served its share before it died
