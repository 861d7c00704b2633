"""Message kinds and their validated bodies.

A message is ``(kind, body)``; ``body`` is a JSON object whose shape depends on
``kind``.  :func:`validate_body` is the only way a client body enters Parley:
it decodes the body into its typed struct, applies every bound, and returns the
*canonical* encoding (struct fields in declaration order, optional fields left
out when absent, ``custom.data`` object keys sorted, insignificant whitespace
removed).  Store and fan out the canonical bytes; compare them to detect an
idempotency conflict (same ``mid``, other payload).

Guarantees on a validated body: valid UTF-8, no U+0000 anywhere (PostgreSQL
``jsonb`` refuses it), no unknown fields, every string and list bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Raw

from parley.errors import InvalidBody
from parley.protocol.frames import Id
from parley.protocol.limits import MAX_MENTIONS, MAX_TEXT_CHARS, Limits

__all__ = [
    "BODY_TYPES",
    "CLIENT_KINDS",
    "EMPTY_BODY",
    "KINDS",
    "SERVER_ONLY_KINDS",
    "AudioBody",
    "Body",
    "CustomBody",
    "FileBody",
    "ImageBody",
    "LocationBody",
    "RecallBody",
    "TextBody",
    "VideoBody",
    "encode_body",
    "validate_body",
]

# ``$`` alone would accept one trailing newline (Python ``re.search``); ``(?!\n)``
# closes that hole and is valid ECMAScript too, so the JSON Schema stays usable.
_END = r"$(?!\n)"
_MIME_PART = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"

FileId = Annotated[str, Meta(pattern=rf"^[A-Za-z0-9_-]{{1,128}}{_END}")]
Mime = Annotated[str, Meta(pattern=rf"^{_MIME_PART}/{_MIME_PART}{_END}")]
ImageMime = Annotated[str, Meta(pattern=rf"^image/{_MIME_PART}{_END}")]
AudioMime = Annotated[str, Meta(pattern=rf"^audio/{_MIME_PART}{_END}")]
VideoMime = Annotated[str, Meta(pattern=rf"^video/{_MIME_PART}{_END}")]
Size = Annotated[int, Meta(gt=0, lt=2**53)]
Pixels = Annotated[int, Meta(ge=1, le=30_000)]
DurationMs = Annotated[int, Meta(ge=1, le=10_800_000)]
FileName = Annotated[str, Meta(min_length=1, max_length=255)]

_TEXT_DESC = "1..welcome.limits.max_text_chars characters (default 8000)"


class _BodyBase(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Base of bodies: strict, frozen, absent optionals omitted."""


class TextBody(_BodyBase, frozen=True, kw_only=True):
    """``text``: plain text, optionally mentioning users."""

    text: Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_CHARS, description=_TEXT_DESC)]
    mentions: Annotated[list[Id], Meta(max_length=MAX_MENTIONS)] = []


class ImageBody(_BodyBase, frozen=True, kw_only=True):
    """``image``: an uploaded image file."""

    file_id: FileId
    mime: ImageMime
    size: Size
    width: Pixels
    height: Pixels
    name: FileName | None = None
    thumb_file_id: FileId | None = None


class AudioBody(_BodyBase, frozen=True, kw_only=True):
    """``audio``: an uploaded audio clip (voice message)."""

    file_id: FileId
    mime: AudioMime
    size: Size
    duration_ms: DurationMs


class VideoBody(_BodyBase, frozen=True, kw_only=True):
    """``video``: an uploaded video."""

    file_id: FileId
    mime: VideoMime
    size: Size
    duration_ms: DurationMs
    width: Pixels
    height: Pixels
    thumb_file_id: FileId | None = None


class FileBody(_BodyBase, frozen=True, kw_only=True):
    """``file``: any uploaded file."""

    file_id: FileId
    name: FileName
    mime: Mime
    size: Size


class LocationBody(_BodyBase, frozen=True, kw_only=True):
    """``location``: a point on Earth (WGS 84 degrees)."""

    lat: Annotated[float, Meta(ge=-90.0, le=90.0)]
    lon: Annotated[float, Meta(ge=-180.0, le=180.0)]
    name: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    address: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None


class CustomBody(_BodyBase, frozen=True, kw_only=True):
    """``custom``: application-defined; the encoded body is capped (default 16 KiB)."""

    type: Annotated[str, Meta(pattern=rf"^[!-~]{{1,64}}{_END}")]
    data: Any = None


class RecallBody(_BodyBase, frozen=True, kw_only=True):
    """``recall`` (server-only): the message ``mid`` of the same conversation was recalled."""

    mid: Annotated[str, Meta(min_length=1, max_length=160)]


Body = (
    TextBody | ImageBody | AudioBody | VideoBody | FileBody | LocationBody | CustomBody | RecallBody
)

BODY_TYPES: Final[Mapping[str, type[Body]]] = {
    "text": TextBody,
    "image": ImageBody,
    "audio": AudioBody,
    "video": VideoBody,
    "file": FileBody,
    "location": LocationBody,
    "custom": CustomBody,
    "recall": RecallBody,
}
"""Kind name -> body struct."""

KINDS: Final = frozenset(BODY_TYPES)
SERVER_ONLY_KINDS: Final = frozenset({"recall"})
CLIENT_KINDS: Final = KINDS - SERVER_ONLY_KINDS

EMPTY_BODY: Final = b"{}"
"""The body of a recalled message's tombstone."""

# Constant tables of stateless codecs: one decoder per kind, one canonical encoder.
_DECODERS: Final[Mapping[str, msgspec.json.Decoder[Any]]] = {
    kind: msgspec.json.Decoder(tp) for kind, tp in BODY_TYPES.items()
}
_CANONICAL: Final = msgspec.json.Encoder(order="deterministic")
# ``\u0000`` preceded by an even number of backslashes, i.e. a real NUL escape.
_NUL_RE: Final = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\u0000")


def validate_body(
    kind: str,
    body: bytes | bytearray | memoryview | Raw | Mapping[str, Any],
    limits: Limits,
    *,
    allow_server_kinds: bool = False,
) -> tuple[Body, bytes]:
    """Validate ``body`` as a ``kind`` body; return ``(typed body, canonical bytes)``.

    ``body`` is the raw JSON (``send.body``) or an already-decoded JSON object
    (HTTP API).  Raises :class:`~parley.errors.InvalidBody` with a message naming
    the offending field.  Server-only kinds (``recall``) are refused unless
    ``allow_server_kinds`` is set (the server itself, or a client SDK reading
    pushed messages).
    """
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise InvalidBody(f"unknown message kind {kind!r}")
    if kind in SERVER_ONLY_KINDS and not allow_server_kinds:
        raise InvalidBody(f"clients may not send {kind!r} messages")
    data = _as_buffer(body)
    try:
        typed = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidBody(f"{kind} body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidBody(f"{kind} body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidBody(f"{kind} body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidBody(f"{kind} body is nested too deeply") from None
    if isinstance(typed, TextBody) and len(typed.text) > limits.max_text_chars:
        raise InvalidBody(f"text body: text is longer than {limits.max_text_chars} characters")
    canonical = encode_body(typed)
    if isinstance(typed, CustomBody) and len(canonical) > limits.max_custom_bytes:
        raise InvalidBody(f"custom body: encoded size exceeds {limits.max_custom_bytes} bytes")
    if b"\\u0000" in canonical and _NUL_RE.search(canonical) is not None:
        raise InvalidBody(f"{kind} body: strings must not contain U+0000")
    return typed, canonical


def encode_body(body: Body) -> bytes:
    """The canonical JSON encoding of a typed body (no validation)."""
    return _CANONICAL.encode(body)


def _as_buffer(
    body: bytes | bytearray | memoryview | Raw | Mapping[str, Any],
) -> bytes | bytearray | memoryview:
    if isinstance(body, Raw | bytes | bytearray | memoryview):
        return body  # decoding copies what it keeps; no need to copy the input
    try:
        return msgspec.json.encode(body)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidBody(f"body is not representable as JSON: {exc}") from None
