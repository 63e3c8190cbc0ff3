"""Retries as a wrapping transport, with an optional local fallback as the last resort.

UNAVAILABLE, RESOURCE_EXHAUSTED (both :class:`RetryableError`), DEADLINE_EXCEEDED and connection
loss (reported by gRPC as UNAVAILABLE) are retried up to ``allowed_tries`` in all; by default on a
*different* server (the failed ones are passed down as ``exclude``), with the same request id.
A call either returns a whole response or raises: never a partial result. When every try failed
and a fallback transport is given (a local pysonic server), it serves the call.

Example::

    transport = Retrying(Balanced(servers), RetryPolicy(allowed_tries=3), fallback=local)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from tritonclient.grpc import model_config_pb2, service_pb2

from pysonic.client._metrics import ClientMetrics
from pysonic.client._transport import AsyncTransport
from pysonic.errors import DeadlineExceededError, PysonicError, RetryableError
from pysonic.protocol.types import InferRequest, InferResponse

__all__ = ["RetryPolicy", "Retrying"]

log = logging.getLogger("pysonic.client")


@dataclass(frozen=True)
class RetryPolicy:
    """``where``: ``different`` server, the ``same`` one, or straight to the ``fallback``."""

    allowed_tries: int = 3
    where: Literal["different", "same", "fallback"] = "different"
    backoff_s: float = 0.0
    retry_on: tuple[type[PysonicError], ...] = (RetryableError, DeadlineExceededError)


class Retrying(AsyncTransport):
    """Retry retryable failures on ``inner``; then ``fallback`` if there is one."""

    def __init__(
        self,
        inner: AsyncTransport,
        policy: RetryPolicy | None = None,
        *,
        fallback: AsyncTransport | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.fallback = fallback
        self.metrics = metrics
        self.name = f"retrying({inner.name})"

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> InferResponse:
        policy = self.policy
        tries = 1 if policy.where == "fallback" else max(policy.allowed_tries, 1)
        excluded = set(exclude)
        last: PysonicError | None = None
        for attempt in range(tries):
            if attempt:
                if self.metrics:
                    self.metrics.retries.labels(request.model_name).inc()
                if policy.backoff_s:
                    await asyncio.sleep(policy.backoff_s * attempt)
            try:
                return await self.inner.infer(request, timeout=timeout, exclude=frozenset(excluded))
            except policy.retry_on as err:
                last = err
                log.info(
                    "request %s to %s failed (try %d/%d): %s",
                    request.id,
                    err.server,
                    attempt + 1,
                    tries,
                    err.message,
                )
                if policy.where != "same" and err.server:
                    excluded.add(err.server)
        assert last is not None
        if self.fallback is None:
            raise last
        log.warning(
            "no remote server could serve model '%s' (%s): using the local fallback",
            request.model_name,
            last.message,
        )
        if self.metrics:
            self.metrics.fallbacks.labels(request.model_name).inc()
        return await self.fallback.infer(request, timeout=timeout)

    async def model_config(self, model: str, version: str = "") -> model_config_pb2.ModelConfig:
        try:
            return await self.inner.model_config(model, version)
        except RetryableError:
            if self.fallback is None:
                raise
            return await self.fallback.model_config(model, version)

    async def model_statistics(
        self, model: str, version: str = ""
    ) -> list[service_pb2.ModelStatistics]:
        return await self.inner.model_statistics(model, version)

    async def close(self) -> None:
        await self.inner.close()
        if self.fallback is not None:
            await self.fallback.close()
