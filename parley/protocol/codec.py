"""Bytes <-> frames, with size limits.  Pure functions, no I/O.

Decoding guarantees (:func:`decode_client_frame`):

* only :class:`~parley.errors.ParleyError` subclasses are raised, whatever the
  input: :class:`~parley.errors.FrameTooLarge` (checked before parsing),
  :class:`InvalidUtf8` (a failing frame that is not UTF-8; an
  :class:`~parley.errors.InvalidFrame`), :class:`~parley.errors.InvalidFrame`
  (malformed JSON, wrong types or bounds; the message names the field as a
  ``$.path``), :class:`~parley.errors.UnknownFrame` (a JSON object whose ``"t"``
  is a string this server does not know);
* a returned frame satisfies every static bound of :mod:`parley.protocol.frames`,
  its page ``limit`` is clamped to the :class:`Limits` caps, ``sync``
  cursors name each conversation at most once, and ``history`` has at most one
  of ``before`` / ``after``;
* ``send.body`` is *not* validated here: call
  :func:`parley.protocol.bodies.validate_body` (and
  :func:`parley.protocol.ids.check_message_id` for ``mid``).

After a failure, :func:`salvage_rid` recovers the request id, if any, so the
``error`` reply can be matched by the client.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from parley.errors import FrameTooLarge, InvalidFrame, ParleyError, UnknownFrame
from parley.protocol.frames import (
    CLIENT_FRAME_TAGS,
    MAX_ID,
    SERVER_FRAME_TAGS,
    ClientFrame,
    Convs,
    ErrorFrame,
    History,
    ServerFrame,
    Sync,
)
from parley.protocol.limits import Limits

__all__ = [
    "MAX_ERROR_MESSAGE_CHARS",
    "InvalidUtf8",
    "Limits",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
    "encode_error",
    "salvage_rid",
]

MAX_ERROR_MESSAGE_CHARS = 512
"""Error messages are cut to this length on the wire."""

_CLIENT_DECODER: Final[msgspec.json.Decoder[ClientFrame]] = msgspec.json.Decoder(ClientFrame)
_SERVER_DECODER: Final[msgspec.json.Decoder[ServerFrame]] = msgspec.json.Decoder(ServerFrame)
_ENCODER: Final = msgspec.json.Encoder()

_Buffer = bytes | bytearray | memoryview


class InvalidUtf8(InvalidFrame):
    """The frame is not valid UTF-8 (close the socket with 1007).  Code ``invalid_frame``."""


def decode_client_frame(data: _Buffer, limits: Limits) -> ClientFrame:
    """Decode one client text frame.  See the module docstring for the guarantees.

    ``bytearray``/``memoryview`` input is copied first, because ``send.body``
    keeps a reference to the decoded buffer.
    """
    buf = _owned(data, limits.max_frame_bytes)
    try:
        frame = _CLIENT_DECODER.decode(buf)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _classify(buf, exc, CLIENT_FRAME_TAGS) from None
    if type(frame) is Sync:
        return _normal_sync(frame, limits)
    if type(frame) is History:
        return _normal_history(frame, limits)
    if type(frame) is Convs and frame.limit > limits.convs_page_max:
        return msgspec.structs.replace(frame, limit=limits.convs_page_max)
    return frame


def decode_server_frame(data: _Buffer, max_frame_bytes: int | None = None) -> ServerFrame:
    """Decode one server frame (for clients).  Unknown fields are ignored; an unknown
    ``"t"`` raises :class:`~parley.errors.UnknownFrame`, which a client should skip."""
    buf = _owned(data, max_frame_bytes)
    try:
        return _SERVER_DECODER.decode(buf)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _classify(buf, exc, SERVER_FRAME_TAGS) from None


def encode(frame: ClientFrame | ServerFrame) -> bytes:
    """Encode a frame to the bytes of one WebSocket text frame.

    Encoding does not re-check bounds: build server frames from validated data.
    Encode a fan-out ``msg`` once and send the same bytes to every device.
    """
    return _ENCODER.encode(frame)


def encode_error(rid: int | None, exc: ParleyError) -> bytes:
    """The ``error`` frame for ``exc`` answering request ``rid`` (None: not attributable)."""
    message = exc.message
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
    frame = ErrorFrame(rid=rid, code=exc.code, message=message, retryable=exc.retryable)
    return _ENCODER.encode(frame)


def salvage_rid(data: _Buffer, limits: Limits) -> int | None:
    """Best effort: the valid ``rid`` of a frame that failed to decode, else None.

    For the ``error`` reply only; costs a second parse, so use it on the error path.
    """
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > limits.max_frame_bytes:
        return None
    obj = _loose(data)
    if not isinstance(obj, dict):
        return None
    rid = obj.get("rid")
    if type(rid) is int and 0 <= rid < MAX_ID:
        return rid
    return None


# --------------------------------------------------------------------------- private


def _owned(data: _Buffer, max_bytes: int | None) -> bytes:
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if max_bytes is not None and size > max_bytes:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_bytes} bytes")
    return data if isinstance(data, bytes) else bytes(data)


def _loose(buf: _Buffer) -> Any:
    """Generic JSON parse for the error path; None when it is not JSON at all."""
    try:
        return msgspec.json.decode(buf)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _classify(buf: bytes, exc: Exception, tags: frozenset[str]) -> InvalidFrame | UnknownFrame:
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidUtf8("frame is not valid UTF-8")
    if isinstance(exc, RecursionError):
        return InvalidFrame("frame is nested too deeply")
    if not isinstance(exc, msgspec.ValidationError):
        return InvalidFrame(f"malformed JSON: {exc}")
    obj = _loose(buf)
    tag = obj.get("t") if isinstance(obj, dict) else None
    if isinstance(tag, str):
        shown = tag if len(tag) <= 32 else tag[:32] + "..."
        if tag not in tags:
            return UnknownFrame(f"unknown frame type {shown!r}")
        return InvalidFrame(f"invalid {shown!r} frame: {exc}")
    return InvalidFrame(f"invalid frame: {exc}")


def _normal_history(frame: History, limits: Limits) -> History:
    if frame.before is not None and frame.after is not None:
        raise InvalidFrame("invalid 'history' frame: give either before or after, not both")
    if frame.limit > limits.history_page_max:
        return msgspec.structs.replace(frame, limit=limits.history_page_max)
    return frame


def _normal_sync(frame: Sync, limits: Limits) -> Sync:
    if len(frame.cursors) > 1 and len({c.conv for c in frame.cursors}) != len(frame.cursors):
        raise InvalidFrame("invalid 'sync' frame: a conversation appears twice in cursors")
    if frame.limit > limits.sync_page_max:
        return msgspec.structs.replace(frame, limit=limits.sync_page_max)
    return frame
