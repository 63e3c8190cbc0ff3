"""pysonic's one exception tree, transport-neutral.

Every failure on the request path becomes one of these; the transports map them to a gRPC status
or an HTTP status through :data:`STATUS_TABLE`, in exactly one place (:func:`grpc_status`,
:func:`http_status`)::

    PysonicError                       code
    ├── InvalidArgumentError           INVALID_ARGUMENT   (bad tensor, shape, dtype, size, params)
    │   └── ModelConfigError           INVALID_ARGUMENT   (config.pbtxt / repository problems)
    ├── NotFoundError                  NOT_FOUND          (unknown model, version, tensor)
    ├── UnavailableError               UNAVAILABLE        (model not ready, server draining)
    │   └── ... retryable
    ├── ResourceExhaustedError         RESOURCE_EXHAUSTED (queue full, message too large)
    ├── DeadlineExceededError          DEADLINE_EXCEEDED  (queue timeout, client deadline)
    ├── UnimplementedError             UNIMPLEMENTED      (feature not provided)
    ├── AlreadyExistsError             ALREADY_EXISTS
    ├── FailedPreconditionError        FAILED_PRECONDITION
    ├── CancelledError                 CANCELLED
    ├── UnauthenticatedError           UNAUTHENTICATED    (no or bad credentials)
    ├── PermissionDeniedError          PERMISSION_DENIED  (authenticated, not allowed)
    └── InternalError                  INTERNAL           (backend crashed, bug)

Retryable errors (UNAVAILABLE, RESOURCE_EXHAUSTED) share the :class:`RetryableError` mixin, so a
retry policy is ``isinstance(err, RetryableError)``.

Example::

    raise InvalidArgumentError(
        f"input 'pf_points': expected datatype FP32, got INT64"
    )
"""

from __future__ import annotations

import enum
from typing import ClassVar

import grpc

__all__ = [
    "STATUS_TABLE",
    "AlreadyExistsError",
    "CancelledError",
    "DeadlineExceededError",
    "ErrorCode",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "ModelConfigError",
    "NotFoundError",
    "PermissionDeniedError",
    "PysonicError",
    "ResourceExhaustedError",
    "RetryableError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "from_grpc_status",
    "grpc_status",
    "http_status",
]


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


#: The one table from transport-neutral code to (gRPC status, HTTP status).
STATUS_TABLE: dict[ErrorCode, tuple[grpc.StatusCode, int]] = {
    ErrorCode.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorCode.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    ErrorCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    ErrorCode.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    ErrorCode.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorCode.UNIMPLEMENTED: (grpc.StatusCode.UNIMPLEMENTED, 501),
    ErrorCode.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, 409),
    ErrorCode.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    ErrorCode.CANCELLED: (grpc.StatusCode.CANCELLED, 499),
    ErrorCode.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
    ErrorCode.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
    ErrorCode.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 403),
}


class PysonicError(Exception):
    """Base of every pysonic error; ``code`` says how transports report it."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: on the client side: the server that answered with this error, if any
        self.server = server


class RetryableError(PysonicError):
    """Parent of errors that another try (or another server) may not hit."""


class InvalidArgumentError(PysonicError):
    code = ErrorCode.INVALID_ARGUMENT


class ModelConfigError(InvalidArgumentError):
    """A model's config.pbtxt or repository layout is wrong (names the file and line)."""


class NotFoundError(PysonicError):
    code = ErrorCode.NOT_FOUND


class UnavailableError(RetryableError):
    code = ErrorCode.UNAVAILABLE


class ResourceExhaustedError(RetryableError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(PysonicError):
    code = ErrorCode.DEADLINE_EXCEEDED


class UnimplementedError(PysonicError):
    code = ErrorCode.UNIMPLEMENTED


class AlreadyExistsError(PysonicError):
    code = ErrorCode.ALREADY_EXISTS


class FailedPreconditionError(PysonicError):
    code = ErrorCode.FAILED_PRECONDITION


class CancelledError(PysonicError):
    code = ErrorCode.CANCELLED


class InternalError(PysonicError):
    code = ErrorCode.INTERNAL


class UnauthenticatedError(PysonicError):
    """No credentials, or credentials the server cannot verify (401 / UNAUTHENTICATED)."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(PysonicError):
    """The caller is known but not allowed to do this (403 / PERMISSION_DENIED)."""

    code = ErrorCode.PERMISSION_DENIED


_CLASS_BY_CODE: dict[ErrorCode, type[PysonicError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.UNAVAILABLE: UnavailableError,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorCode.UNIMPLEMENTED: UnimplementedError,
    ErrorCode.ALREADY_EXISTS: AlreadyExistsError,
    ErrorCode.FAILED_PRECONDITION: FailedPreconditionError,
    ErrorCode.CANCELLED: CancelledError,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.UNAUTHENTICATED: UnauthenticatedError,
    ErrorCode.PERMISSION_DENIED: PermissionDeniedError,
}
_CODE_BY_GRPC = {grpc_code: code for code, (grpc_code, _) in STATUS_TABLE.items()}


def from_grpc_status(status: grpc.StatusCode, details: str) -> PysonicError:
    """The pysonic error for a gRPC status received by a client (the reverse of the table).

    Codes outside the table (UNKNOWN, DATA_LOSS, ...) become InternalError."""
    code = _CODE_BY_GRPC.get(status, ErrorCode.INTERNAL)
    return _CLASS_BY_CODE[code](details or status.name)


def grpc_status(err: PysonicError) -> grpc.StatusCode:
    """The gRPC status code for ``err``."""
    return STATUS_TABLE[err.code][0]


def http_status(err: PysonicError) -> int:
    """The HTTP status code for ``err``."""
    return STATUS_TABLE[err.code][1]
