"""Bearer-token authentication and per-model authorization for the gRPC service.

A ``grpc.aio`` server interceptor over :class:`~pysonic.server.auth.AuthPolicy`: the
``authorization`` metadata is checked before the handler runs (UNAUTHENTICATED without valid
credentials), and requests that name a model are authorized once their message is decoded
(PERMISSION_DENIED); health RPCs (ServerLive, ServerReady, ModelReady) stay open. On a
ModelStreamInfer stream every request is checked: the first one that is not allowed ends the
stream's input, lets the requests already in flight answer, and closes the stream with
PERMISSION_DENIED.

Example::

    server = grpc.aio.server(interceptors=[AuthInterceptor(AuthPolicy.load("auth.yaml"))])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pysonic.errors import PysonicError, grpc_status
from pysonic.server.auth import AUTHENTICATED, OPEN, Action, AuthPolicy, Principal, Target

__all__ = ["AuthInterceptor", "grpc_target"]

_PREFIX = "/inference.GRPCInferenceService/"

#: method -> (action, the request field naming the model); absent: authentication only
_MODEL_ACTIONS: dict[str, tuple[Action, str | None]] = {
    "ModelMetadata": (Action.METADATA, "name"),
    "ModelConfig": (Action.METADATA, "name"),
    "ModelStatistics": (Action.METADATA, "name"),
    "ModelInfer": (Action.INFER, "model_name"),
    "ModelStreamInfer": (Action.INFER, "model_name"),
    "RepositoryModelLoad": (Action.LOAD, "model_name"),
    "RepositoryModelUnload": (Action.UNLOAD, "model_name"),
    **{
        f"{family}SharedMemory{op}": (Action.SHARED_MEMORY, None)
        for family in ("System", "Cuda")
        for op in ("Status", "Register", "Unregister")
    },
}
_OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})


def grpc_target(method: str, request: Any = None) -> Target:
    """What a call of ``method`` (full path or bare name) with ``request`` asks for."""
    name = method.rsplit("/", 1)[-1]
    if name in _OPEN_METHODS and method.startswith((_PREFIX, name)):
        return OPEN
    action = _MODEL_ACTIONS.get(name)
    if action is None or not method.startswith((_PREFIX, name)):
        return AUTHENTICATED
    verb, field = action
    if field is None:
        return Target(verb)
    return Target(verb, "" if request is None else str(getattr(request, field, "")))


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate every call, authorize the ones that name a model."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        target = grpc_target(method)
        if handler is None or target.open:
            return handler
        try:
            who = self.policy.authenticate(_authorization(details.invocation_metadata))  # type: ignore[attr-defined]
            if target.model is None:
                self.policy.authorize(who, target)
        except PysonicError as err:
            return _refusal(handler, err)
        if target.model is None:
            return handler
        if handler.request_streaming and handler.response_streaming:
            return _rewrap(handler, stream_stream=self._checked_stream(handler, who, method))
        if not handler.request_streaming and not handler.response_streaming:
            return _rewrap(handler, unary_unary=self._checked_unary(handler, who, method))
        return handler  # no such method in this service

    def _checked_unary(
        self, handler: grpc.RpcMethodHandler, who: Principal, method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        inner = handler.unary_unary
        policy = self.policy

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                policy.authorize(who, grpc_target(method, request))
            except PysonicError as err:
                await context.abort(grpc_status(err), err.message)
            return await inner(request, context)

        return unary

    def _checked_stream(
        self, handler: grpc.RpcMethodHandler, who: Principal, method: str
    ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]:
        inner = handler.stream_stream
        policy = self.policy

        async def stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            refused: list[PysonicError] = []

            async def allowed() -> AsyncIterator[Any]:
                async for request in requests:
                    try:
                        policy.authorize(who, grpc_target(method, request))
                    except PysonicError as err:
                        refused.append(err)
                        return
                    yield request

            async for response in inner(allowed(), context):
                yield response
            if refused:
                await context.abort(grpc_status(refused[0]), refused[0].message)

        return stream


def _refusal(handler: grpc.RpcMethodHandler, err: PysonicError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``err``'s status at once."""
    code, message = grpc_status(err), err.message

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.response_streaming:
        kind = "stream_stream" if handler.request_streaming else "unary_stream"
        return _rewrap(handler, **{kind: streaming})
    kind = "stream_unary" if handler.request_streaming else "unary_unary"
    return _rewrap(handler, **{kind: unary})


_MAKERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _rewrap(handler: grpc.RpcMethodHandler, **behavior: Any) -> grpc.RpcMethodHandler:
    ((kind, fn),) = behavior.items()
    return _MAKERS[kind](
        fn,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
