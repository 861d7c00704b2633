"""Bodies: each kind, every bound, canonical encoding, error codes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from parley.errors import InvalidBody
from parley.protocol import (
    CLIENT_KINDS,
    KINDS,
    AudioBody,
    CustomBody,
    FileBody,
    ImageBody,
    Limits,
    LocationBody,
    RecallBody,
    TextBody,
    VideoBody,
    encode_body,
    validate_body,
)

L = Limits()

VALID: dict[str, dict[str, Any]] = {
    "text": {"text": "hello", "mentions": [1, 2]},
    "image": {"file_id": "f_1-A", "mime": "image/png", "size": 10, "width": 1, "height": 30000},
    "audio": {"file_id": "a", "mime": "audio/ogg", "size": 1, "duration_ms": 10_800_000},
    "video": {
        "file_id": "v",
        "mime": "video/mp4",
        "size": 2**53 - 1,
        "duration_ms": 1,
        "width": 640,
        "height": 480,
        "thumb_file_id": "t",
    },
    "file": {"file_id": "x", "name": "report (final).pdf", "mime": "application/pdf", "size": 5},
    "location": {"lat": -90, "lon": 180.0, "name": "South Pole"},
    "custom": {"type": "com.example.poll", "data": {"q": "?", "opts": [1, 2.5, None, True]}},
}
TYPES = {
    "text": TextBody,
    "image": ImageBody,
    "audio": AudioBody,
    "video": VideoBody,
    "file": FileBody,
    "location": LocationBody,
    "custom": CustomBody,
}


def bad(kind: str, body: Any, limits: Limits = L) -> str:
    with pytest.raises(InvalidBody) as info:
        validate_body(kind, json.dumps(body).encode(), limits)
    assert info.value.code == "invalid_body"
    return info.value.message


def test_kind_sets() -> None:
    assert set(VALID) == CLIENT_KINDS
    assert {*CLIENT_KINDS, "recall"} == KINDS


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_bodies(kind: str) -> None:
    raw = json.dumps(VALID[kind], indent=2).encode()
    typed, canonical = validate_body(kind, raw, L)
    assert isinstance(typed, TYPES[kind])
    assert json.loads(canonical) == json.loads(json.dumps(VALID[kind])) or kind == "location"
    assert b" " not in canonical.replace(b"South Pole", b"").replace(b"report (final)", b"")
    # Canonical bytes are a fixed point, and every input form gives the same bytes.
    assert validate_body(kind, canonical, L)[1] == canonical
    assert validate_body(kind, msgspec.Raw(raw), L)[1] == canonical
    assert validate_body(kind, memoryview(raw), L)[1] == canonical
    assert validate_body(kind, VALID[kind], L)[1] == canonical
    assert encode_body(typed) == canonical


def test_canonical_form() -> None:
    _, a = validate_body(
        "custom", b'{"data": {"b": 1, "a": [3, {"z": 0, "y": 1}]}, "type": "t"}', L
    )
    assert a == b'{"type":"t","data":{"a":[3,{"y":1,"z":0}],"b":1}}'
    _, t = validate_body("text", b'{"mentions": [], "text": "x"}', L)
    assert t == b'{"text":"x"}'
    _, i = validate_body("image", {**VALID["image"], "name": None}, L)
    assert b"name" not in i


def test_unknown_and_server_only_kinds() -> None:
    assert "unknown message kind" in bad("sticker", {})
    assert "may not send" in bad("recall", {"mid": "m"})
    typed, canonical = validate_body("recall", b'{"mid":"m"}', L, allow_server_kinds=True)
    assert typed == RecallBody(mid="m")
    assert canonical == b'{"mid":"m"}'


@pytest.mark.parametrize(
    ("kind", "body", "needle"),
    [
        ("text", {"text": ""}, "$.text"),
        ("text", {}, "text"),
        ("text", {"text": "x", "mentions": list(range(101))}, "$.mentions"),
        ("text", {"text": "x", "mentions": [-1]}, "$.mentions[0]"),
        ("text", {"text": "x", "extra": 1}, "extra"),
        ("text", {"text": 5}, "$.text"),
        ("text", [], "object"),
        ("text", "hi", "object"),
        ("image", {**VALID["image"], "mime": "text/plain"}, "$.mime"),
        ("image", {**VALID["image"], "mime": "IMAGE/png"}, "$.mime"),
        ("image", {**VALID["image"], "mime": "image/png\n"}, "$.mime"),
        ("image", {**VALID["image"], "mime": "image/"}, "$.mime"),
        ("image", {**VALID["image"], "mime": "image/png; q=1"}, "$.mime"),
        ("image", {**VALID["image"], "width": 0}, "$.width"),
        ("image", {**VALID["image"], "height": 30001}, "$.height"),
        ("image", {**VALID["image"], "size": 0}, "$.size"),
        ("image", {**VALID["image"], "file_id": ""}, "$.file_id"),
        ("image", {**VALID["image"], "file_id": "a/b"}, "$.file_id"),
        ("image", {**VALID["image"], "file_id": "a\n"}, "$.file_id"),
        ("image", {**VALID["image"], "file_id": "a" * 129}, "$.file_id"),
        ("image", {**VALID["image"], "thumb_file_id": "a.b"}, "$.thumb_file_id"),
        ("image", {**VALID["image"], "name": ""}, "$.name"),
        ("image", {**VALID["image"], "name": "n" * 256}, "$.name"),
        ("audio", {**VALID["audio"], "mime": "video/mp4"}, "$.mime"),
        ("audio", {**VALID["audio"], "duration_ms": 0}, "$.duration_ms"),
        ("audio", {**VALID["audio"], "duration_ms": 10_800_001}, "$.duration_ms"),
        ("video", {**VALID["video"], "mime": "audio/ogg"}, "$.mime"),
        ("video", {**VALID["video"], "size": 2**53}, "$.size"),
        ("video", {**VALID["video"], "width": 30001}, "$.width"),
        ("file", {**VALID["file"], "name": ""}, "$.name"),
        ("file", {**VALID["file"], "name": "n" * 256}, "$.name"),
        ("file", {**VALID["file"], "mime": "pdf"}, "$.mime"),
        ("file", {**VALID["file"], "mime": "a/b/c"}, "$.mime"),
        ("location", {"lat": 90.0001, "lon": 0}, "$.lat"),
        ("location", {"lat": 0, "lon": -180.5}, "$.lon"),
        ("location", {"lat": "1", "lon": 0}, "$.lat"),
        ("location", {"lat": 0, "lon": 0, "address": "a" * 1025}, "$.address"),
        ("custom", {"type": "", "data": 1}, "$.type"),
        ("custom", {"type": "t" * 65}, "$.type"),
        ("custom", {"type": "has space"}, "$.type"),
    ],
)
def test_bounds(kind: str, body: Any, needle: str) -> None:
    message = bad(kind, body)
    assert needle in message
    assert message.startswith(kind)


def test_edges_accepted() -> None:
    validate_body("text", {"text": "é" * 8000, "mentions": list(range(100))}, L)
    validate_body("image", {**VALID["image"], "name": "n" * 255, "file_id": "a" * 128}, L)
    validate_body("location", {"lat": 90, "lon": -180}, L)
    validate_body("custom", {"type": "t" * 64}, L)
    validate_body("file", {**VALID["file"], "mime": "application/vnd.ms-excel+xml.v2"}, L)


def test_text_limit_is_configurable() -> None:
    assert "longer than 8000" in bad("text", {"text": "é" * 8001})
    small = Limits(max_text_chars=10)
    validate_body("text", {"text": "x" * 10}, small)
    assert "longer than 10" in bad("text", {"text": "x" * 11}, small)


def test_custom_size_cap() -> None:
    body = {"type": "t", "data": "x" * 100}
    size = len(validate_body("custom", body, L)[1])
    validate_body("custom", body, Limits(max_custom_bytes=size))
    assert "exceeds" in bad("custom", body, Limits(max_custom_bytes=size - 1))
    assert "exceeds" in bad("custom", {"type": "t", "data": "x" * 16_400})


def test_nul_is_refused_but_escaped_backslash_u_is_fine() -> None:
    assert "U+0000" in bad("text", {"text": "a\x00b"})
    assert "U+0000" in bad("text", {"text": "\\\x00"})
    assert "U+0000" in bad("custom", {"type": "t", "data": {"k\x00": 1}})
    typed, _ = validate_body("text", {"text": "\\u0000 and \\\\u0000"}, L)
    assert typed == TextBody(text="\\u0000 and \\\\u0000")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"text":"\xff"}', "UTF-8"),
        (b'{"text":"x"', "not valid JSON"),
        (b'{"text":"x"} 1', "not valid JSON"),
        (b'{"type":"t","data":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        (b'{"type":"t","data":1e400}', "$.data"),
    ],
)
def test_malformed_raw(raw: bytes, needle: str) -> None:
    kind = "custom" if b"type" in raw else "text"
    with pytest.raises(InvalidBody) as info:
        validate_body(kind, raw, L)
    assert needle in info.value.message


def test_unrepresentable_object() -> None:
    with pytest.raises(InvalidBody, match="representable"):
        validate_body("custom", {"type": "t", "data": object()}, L)
