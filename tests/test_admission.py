"""Admission accounting (pysonic.server.admission) and its wiring into ServerOptions."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pysonic.errors import InvalidArgumentError, ResourceExhaustedError
from pysonic.protocol.types import InferRequest, InferTensor
from pysonic.server import ServerOptions
from pysonic.server.admission import (
    Admission,
    AdmissionLimits,
    default_inflight_bytes,
    peer_address,
    shared_memory_bytes,
)


def test_byte_budget_and_release() -> None:
    adm = Admission(AdmissionLimits(max_inflight_bytes=100))
    a = adm.admit("c", 60)
    with pytest.raises(ResourceExhaustedError, match="in-flight memory budget"):
        adm.admit("c", 50)
    b = adm.admit("c", 40)
    assert (adm.inflight, adm.inflight_bytes, adm.rejected) == (2, 100, 1)
    a.release()
    a.release()  # idempotent
    b.release()
    assert (adm.inflight, adm.inflight_bytes) == (0, 0)


def test_request_limit_and_growth() -> None:
    adm = Admission(AdmissionLimits(max_request_bytes=100, max_inflight_bytes=150))
    with pytest.raises(InvalidArgumentError, match="--max-request-bytes"):
        adm.admit("c", 101)
    with adm.admit("c", 80) as t:
        with pytest.raises(InvalidArgumentError):
            t.grow(30)  # shared-memory inputs count toward the request's size
        t.grow(20)
        assert adm.inflight_bytes == 100
        t.resize(10)  # a chunked body charged the limit, then what arrived
        assert adm.inflight_bytes == 10
    assert adm.inflight_bytes == 0


def test_per_client_limit() -> None:
    adm = Admission(AdmissionLimits(max_inflight_per_client=2))
    assert adm.tracks_clients
    held = [adm.admit("a"), adm.admit("a")]
    with pytest.raises(ResourceExhaustedError, match="client 'a'"):
        adm.admit("a")
    other = adm.admit("b")
    held.pop().release()
    held.append(adm.admit("a"))
    for t in (*held, other):
        t.release()
    assert adm.inflight == 0
    assert not adm._per_client


def test_wait_idle() -> None:
    async def run() -> tuple[bool, bool]:
        adm = Admission()
        t = adm.admit()
        asyncio.get_running_loop().call_later(0.05, t.release)
        drained = await adm.wait_idle(5)
        stuck = adm.admit()
        timed_out = await adm.wait_idle(0.05)
        stuck.release()
        return drained, timed_out

    assert asyncio.run(run()) == (True, False)


def test_helpers() -> None:
    assert peer_address("ipv4:10.0.0.7:5123") == "10.0.0.7"
    assert peer_address("ipv6:[::1]:5123") == "::1"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s"
    x = np.zeros((2, 8), np.float32)
    req = InferRequest(
        "m",
        [
            InferTensor("a", "FP32", x.shape, x, {"shared_memory_region": "r"}),
            InferTensor("b", "FP32", x.shape, x),
        ],
    )
    assert shared_memory_bytes(req) == x.nbytes
    assert default_inflight_bytes() > 0


def test_server_options_make_limits_consistent() -> None:
    opts = ServerOptions(max_request_bytes=1 << 20, max_inflight_bytes=0)
    assert opts.request_limit(256 << 20) == 1 << 20
    assert opts.admission_limits() == AdmissionLimits(1 << 20, 0, 0)
    default = ServerOptions()
    assert default.request_limit(256 << 20) == 256 << 20
    assert default.admission_limits().max_inflight_bytes == default_inflight_bytes()
