"""Parley's one exception tree and its stable error codes.

Every refusal Parley makes, on the WebSocket or over HTTP, carries one of the
codes below.  Codes are part of the public interface: never rename or reuse one;
add new ones at the end of their group.

    ParleyError                      code            HTTP  retryable
    ├── BadRequest                   bad_request      400
    │   ├── InvalidFrame             invalid_frame    400  (malformed JSON / wrong types)
    │   ├── UnknownFrame             unknown_frame    400
    │   ├── FrameTooLarge            frame_too_large  413
    │   ├── InvalidMessageId         invalid_message_id 400
    │   ├── InvalidBody              invalid_body     400
    │   └── IdempotencyConflict      idempotency_conflict 409 (same id, other payload)
    ├── Unauthenticated              unauthenticated  401
    ├── Forbidden                    forbidden        403
    │   ├── NotMember                not_member       403
    │   └── RecallWindowPassed       recall_window_passed 403
    ├── NotFound                     not_found        404
    ├── Conflict                     conflict         409
    ├── RateLimited                  rate_limited     429  yes
    ├── Unavailable                  unavailable      503  yes (database down, shutting down)
    ├── ConfigError                  config_error     (start-up only; one line on stderr)
    └── StartupError                 startup_failed   (port taken, data dir unwritable, ...)

The wire form of an error is ``{"code": ..., "message": ..., "request_id": ...}``
on HTTP and an ``error`` frame on the WebSocket (see docs/protocol.md).
"""

from __future__ import annotations

__all__ = [
    "EXIT_CONFIG",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "FrameTooLarge",
    "IdempotencyConflict",
    "InvalidBody",
    "InvalidFrame",
    "InvalidMessageId",
    "NotFound",
    "NotMember",
    "ParleyError",
    "RateLimited",
    "RecallWindowPassed",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
    "UnknownFrame",
]


class ParleyError(Exception):
    """Base of every error Parley reports to a client or operator."""

    code: str = "internal"
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        super().__init__(self.message)


class BadRequest(ParleyError):
    """The request is malformed."""

    code = "bad_request"
    http_status = 400


class InvalidFrame(BadRequest):
    """The frame is not valid JSON or its fields have the wrong types."""

    code = "invalid_frame"


class UnknownFrame(BadRequest):
    """The frame type is not known."""

    code = "unknown_frame"


class FrameTooLarge(BadRequest):
    """The frame exceeds the maximum size."""

    code = "frame_too_large"
    http_status = 413


class InvalidMessageId(BadRequest):
    """The message id is malformed or does not belong to this session."""

    code = "invalid_message_id"


class InvalidBody(BadRequest):
    """The message body does not match its type."""

    code = "invalid_body"


class IdempotencyConflict(BadRequest):
    """The id was already used with a different payload."""

    code = "idempotency_conflict"
    http_status = 409


class Unauthenticated(ParleyError):
    """Authentication is missing or invalid."""

    code = "unauthenticated"
    http_status = 401


class Forbidden(ParleyError):
    """The caller may not do this."""

    code = "forbidden"
    http_status = 403


class NotMember(Forbidden):
    """The caller is not a member of this conversation."""

    code = "not_member"


class RecallWindowPassed(Forbidden):
    """The message is too old to be recalled by its sender."""

    code = "recall_window_passed"


class NotFound(ParleyError):
    """No such object (or the caller may not see it)."""

    code = "not_found"
    http_status = 404


class Conflict(ParleyError):
    """The object already exists or changed meanwhile."""

    code = "conflict"
    http_status = 409


class RateLimited(ParleyError):
    """Too many requests; slow down and retry."""

    code = "rate_limited"
    http_status = 429
    retryable = True


class Unavailable(ParleyError):
    """The service cannot serve this now (database unreachable, shutting down); retry."""

    code = "unavailable"
    http_status = 503
    retryable = True


class ConfigError(ParleyError):
    """A setting is invalid; raised before the node starts."""

    code = "config_error"


EXIT_CONFIG = 2
"""The exit code of a ``parley`` command that refused a setting (``ConfigError``)."""


class StartupError(ParleyError):
    """The node cannot start (port taken, data directory unwritable, schema too new)."""

    code = "startup_failed"
