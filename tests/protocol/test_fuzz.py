"""Property tests: no input makes the decoders raise anything but ParleyError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import InvalidBody, ParleyError
from parley.protocol import (
    CLIENT_FRAME_TAGS,
    KINDS,
    SERVER_FRAME_TAGS,
    Limits,
    Send,
    decode_client_frame,
    decode_server_frame,
    encode,
    salvage_rid,
    validate_body,
)

L = Limits(max_frame_bytes=4096)
FIELDS = [
    "rid", "conv", "seq", "mid", "kind", "body", "cursors", "limit", "before", "after",
    "status", "text", "t", "x", "mentions", "file_id", "mime", "size", "lat", "lon", "type",
    "data", "width", "height", "duration_ms", "name", "uid", "msgs", "more",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2**53 - 1, 2**53, -1, 8000, 30000])
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["text", "image/png", "1.1.d.1.abcdefgh", "online", "\x00", "\ud800"])
)
jsonish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
frame_like = st.builds(
    lambda tag, fields: {"t": tag, **fields},
    st.sampled_from(sorted(CLIENT_FRAME_TAGS | SERVER_FRAME_TAGS | {"nope"})),
    st.dictionaries(st.sampled_from(FIELDS), jsonish, max_size=7),
)


def to_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8", "surrogatepass")


def check_client(data: bytes) -> None:
    try:
        frame = decode_client_frame(data, L)
    except ParleyError:
        pass
    else:
        assert decode_client_frame(encode(frame), L) == frame
        if isinstance(frame, Send):
            check_body(frame.kind, bytes(frame.body))
    with contextlib.suppress(ParleyError):
        decode_server_frame(data, L.max_frame_bytes)
    rid = salvage_rid(data, L)
    assert rid is None or 0 <= rid < 2**53


def check_body(kind: str, raw: bytes) -> None:
    try:
        _, canonical = validate_body(kind, raw, L, allow_server_kinds=True)
    except InvalidBody:
        return
    assert validate_body(kind, canonical, L, allow_server_kinds=True)[1] == canonical


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check_client(data)


@settings(max_examples=400, deadline=None)
@given(jsonish)
def test_random_json(obj: Any) -> None:
    check_client(to_bytes(obj))


@settings(max_examples=800, deadline=None)
@given(frame_like)
def test_frame_shaped_objects(obj: dict[str, Any]) -> None:
    check_client(to_bytes(obj))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(KINDS | {"nope"})), jsonish)
def test_random_bodies(kind: str, obj: Any) -> None:
    check_body(kind, to_bytes(obj))
    with contextlib.suppress(InvalidBody):
        validate_body(kind, obj, L)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_mutated_valid_frames(noise: bytes, at: int) -> None:
    base = b'{"t":"send","rid":1,"conv":2,"mid":"1.1.d.1.abcdefgh","kind":"text","body":{}}'
    at = min(at, len(base))
    check_client(base[:at] + noise + base[at:])
