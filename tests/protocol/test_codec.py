"""Codec: round trips, every bound of every client frame, each error code."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from parley.errors import FrameTooLarge, InvalidFrame, ParleyError, RateLimited, UnknownFrame
from parley.protocol import (
    Ack,
    CloseCode,
    Convs,
    Cursor,
    History,
    InvalidUtf8,
    Limits,
    Ping,
    Presence,
    Read,
    Recall,
    Send,
    Sync,
    Typing,
    close_code_for,
    decode_client_frame,
    encode,
    encode_error,
    salvage_rid,
)

L = Limits()
MID = "1.42.phone.1700000000000.abcdefgh"
BIG = 2**53


def dec(obj: Any, limits: Limits = L) -> Any:
    return decode_client_frame(json.dumps(obj).encode(), limits)


def fails(obj: Any, exc: type[ParleyError] = InvalidFrame, limits: Limits = L) -> str:
    with pytest.raises(exc) as info:
        dec(obj, limits)
    assert type(info.value) is exc
    return info.value.message


CLIENT_FRAMES = [
    Send(rid=1, conv=2, mid=MID, kind="text", body=msgspec.Raw(b'{"text":"hi"}')),
    Ack(conv=2, seq=9),
    Sync(rid=3),
    Sync(rid=3, cursors=[Cursor(1, 5), Cursor(2, 0)], limit=10),
    History(rid=4, conv=2),
    History(rid=4, conv=2, before=100, limit=200),
    History(rid=4, conv=2, after=10, limit=1),
    Read(conv=2, seq=7),
    Read(rid=5, conv=2, seq=7),
    Typing(conv=2),
    Presence(status="dnd", text="in a meeting"),
    Recall(rid=6, conv=2, mid=MID),
    Convs(rid=7),
    Convs(rid=7, after=99, limit=500),
    Ping(),
    Ping(rid=BIG - 1),
]


@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: type(f).__name__)
def test_client_round_trip(frame: Any) -> None:
    data = encode(frame)
    assert json.loads(data)["t"] == type(frame).__struct_config__.tag
    assert decode_client_frame(data, L) == frame


def test_defaults() -> None:
    assert dec({"t": "sync", "rid": 1}) == Sync(rid=1, cursors=[], limit=200)
    assert dec({"t": "history", "rid": 1, "conv": 2}).limit == 50
    assert dec({"t": "history", "rid": 1, "conv": 2}).before is None
    assert dec({"t": "convs", "rid": 1}).limit == 100
    assert dec({"t": "ping"}) == Ping(rid=None)
    assert dec({"t": "read", "conv": 1, "seq": 2}).rid is None
    assert dec({"t": "presence", "status": "away"}).text == ""


def test_send_body_is_raw_json() -> None:
    frame = decode_client_frame(
        b'{"t":"send","rid":1,"conv":2,"mid":"m","kind":"text","body":{"text": "x"}}', L
    )
    assert isinstance(frame, Send)
    assert bytes(frame.body) == b'{"text": "x"}'


@pytest.mark.parametrize("cls", [bytearray, memoryview])
def test_buffer_input_is_copied(cls: Any) -> None:
    buf = bytearray(b'{"t":"send","rid":1,"conv":2,"mid":"m","kind":"text","body":{"a":1}}')
    frame = decode_client_frame(cls(buf), L)
    assert isinstance(frame, Send)
    buf[:] = b"x" * len(buf)
    assert bytes(frame.body) == b'{"a":1}'


# ----------------------------------------------------------------------------- bounds

OK_SEND = {"t": "send", "rid": 1, "conv": 2, "mid": MID, "kind": "text", "body": {}}


def with_(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**base, **kw}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (with_(OK_SEND, rid=-1), "$.rid"),
        (with_(OK_SEND, rid=BIG), "$.rid"),
        (with_(OK_SEND, conv=BIG), "$.conv"),
        (with_(OK_SEND, rid=True), "$.rid"),
        (with_(OK_SEND, rid=1.0), "$.rid"),
        (with_(OK_SEND, rid="1"), "$.rid"),
        (with_(OK_SEND, mid=""), "$.mid"),
        (with_(OK_SEND, mid="m" * 161), "$.mid"),
        (with_(OK_SEND, kind=""), "$.kind"),
        (with_(OK_SEND, kind="Text"), "$.kind"),
        (with_(OK_SEND, kind="text\n"), "$.kind"),
        (with_(OK_SEND, kind="k" * 33), "$.kind"),
        (with_(OK_SEND, extra=1), "extra"),
        ({"t": "ack", "conv": 1}, "seq"),
        ({"t": "ack", "conv": 1, "seq": -1}, "$.seq"),
        ({"t": "sync", "rid": 1, "limit": 0}, "$.limit"),
        ({"t": "sync", "rid": 1, "limit": 1001}, "$.limit"),
        ({"t": "sync", "rid": 1, "cursors": [{"conv": 1}]}, "$.cursors[0]"),
        ({"t": "sync", "rid": 1, "cursors": [{"conv": 1, "seq": 1, "x": 1}]}, "x"),
        ({"t": "sync", "rid": 1, "cursors": {"conv": 1}}, "$.cursors"),
        ({"t": "history", "rid": 1, "conv": 1, "limit": 201}, "$.limit"),
        ({"t": "history", "rid": 1, "conv": 1, "before": -5}, "$.before"),
        ({"t": "history", "rid": 1, "conv": 1, "after": BIG}, "$.after"),
        ({"t": "read", "rid": -1, "conv": 1, "seq": 1}, "$.rid"),
        ({"t": "typing"}, "conv"),
        ({"t": "presence", "status": "offline"}, "$.status"),
        ({"t": "presence", "status": "away", "text": "x" * 141}, "$.text"),
        ({"t": "recall", "rid": 1, "conv": 1}, "mid"),
        ({"t": "convs", "rid": 1, "limit": 501}, "$.limit"),
        ({"t": "convs", "rid": 1, "limit": 0}, "$.limit"),
        ({"t": "ping", "rid": -1}, "$.rid"),
    ],
)
def test_bounds_name_the_field(obj: dict[str, Any], field: str) -> None:
    assert field in fails(obj)


def test_bounds_edges_accepted() -> None:
    assert dec(with_(OK_SEND, rid=BIG - 1, conv=0, mid="m" * 160, kind="k" * 32)).rid == BIG - 1
    assert dec({"t": "presence", "status": "away", "text": "é" * 140}).text == "é" * 140
    assert dec({"t": "sync", "rid": 1, "limit": 1000}).limit == 1000
    assert dec({"t": "sync", "rid": 1, "limit": 1}).limit == 1
    assert dec({"t": "history", "rid": 1, "conv": 1, "limit": 200}).limit == 200
    assert dec({"t": "convs", "rid": 1, "limit": 500}).limit == 500
    for status in ("online", "away", "busy", "dnd", "invisible"):
        assert dec({"t": "presence", "status": status}).status == status


def test_max_cursors() -> None:
    big = Limits(max_frame_bytes=1 << 20)
    cursors = [{"conv": i, "seq": 0} for i in range(4096)]
    assert len(dec({"t": "sync", "rid": 1, "cursors": cursors}, big).cursors) == 4096
    cursors.append({"conv": 5000, "seq": 0})
    assert "$.cursors" in fails({"t": "sync", "rid": 1, "cursors": cursors}, limits=big)


def test_history_before_and_after_is_refused() -> None:
    assert "not both" in fails({"t": "history", "rid": 1, "conv": 1, "before": 9, "after": 1})


def test_duplicate_cursor_conv_is_refused() -> None:
    cursors = [{"conv": 1, "seq": 0}, {"conv": 2, "seq": 0}, {"conv": 1, "seq": 3}]
    assert "twice" in fails({"t": "sync", "rid": 1, "cursors": cursors})


def test_page_limits_are_clamped_to_caps() -> None:
    caps = Limits(sync_page_max=100, history_page_max=20, convs_page_max=30)
    assert dec({"t": "sync", "rid": 1, "limit": 500}, caps).limit == 100
    assert dec({"t": "sync", "rid": 1}, caps).limit == 100
    assert dec({"t": "sync", "rid": 1, "limit": 99}, caps).limit == 99
    assert dec({"t": "history", "rid": 1, "conv": 1}, caps).limit == 20
    assert dec({"t": "convs", "rid": 1, "limit": 31}, caps).limit == 30
    assert dec({"t": "convs", "rid": 1, "limit": 29}, caps).limit == 29


# ----------------------------------------------------------------------------- errors


def test_frame_too_large_edge() -> None:
    small = Limits(max_frame_bytes=1024)
    exact = b'{"t":"ping"' + b" " * (1024 - 12) + b"}"
    assert len(exact) == 1024
    assert decode_client_frame(exact, small) == Ping()
    with pytest.raises(FrameTooLarge) as info:
        decode_client_frame(exact + b" ", small)
    assert close_code_for(info.value) is CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(FrameTooLarge):
        decode_client_frame(memoryview(exact + b" "), small)


@pytest.mark.parametrize(
    "data",
    [
        b'{"t":"ping","rid":"\xff"}',
        b'{"t":"presence","status":"away","text":"\xed\xa0\x80"}',
        b'{"t":"ping"}\xff',
        b'\xc3{"t":"ping"}',
        b'{"t":"nope","x":"\xfe"}',
    ],
)
def test_invalid_utf8(data: bytes) -> None:
    with pytest.raises(InvalidUtf8) as info:
        decode_client_frame(data, L)
    assert info.value.code == "invalid_frame"
    assert close_code_for(info.value) is CloseCode.INVALID_DATA


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"null", b"[]", b'"ping"', b"{}", b'{"t":5}', b'{"t":null}', b'{"t":"ping"} {}'],
)
def test_invalid_frame(data: bytes) -> None:
    with pytest.raises(InvalidFrame) as info:
        decode_client_frame(data, L)
    assert type(info.value) is InvalidFrame
    assert info.value.code == "invalid_frame"
    assert close_code_for(info.value) is None


def test_deep_nesting_is_invalid_frame() -> None:
    deep = b'{"t":"send","rid":1,"conv":1,"mid":"m","kind":"custom","body":'
    deep += b"[" * 20_000 + b"]" * 20_000 + b"}"
    with pytest.raises(InvalidFrame, match="nested"):
        decode_client_frame(deep, Limits(max_frame_bytes=1 << 20))


@pytest.mark.parametrize("tag", ["nope", "SEND", "sent", "welcome", "x" * 100])
def test_unknown_frame(tag: str) -> None:
    message = fails({"t": tag, "rid": 1}, UnknownFrame)
    assert "unknown frame type" in message
    assert len(message) < 100


def test_known_tag_with_bad_fields_names_the_frame() -> None:
    assert fails({"t": "ack", "conv": "x", "seq": 1}).startswith("invalid 'ack' frame: ")


@pytest.mark.parametrize(
    ("data", "rid"),
    [
        (b'{"t":"send","rid":7,"conv":"x"}', 7),
        (b'{"t":"nope","rid":0}', 0),
        (b'{"rid":9007199254740991}', 2**53 - 1),
        (b'{"rid":9007199254740992}', None),
        (b'{"rid":-1}', None),
        (b'{"rid":true}', None),
        (b'{"rid":"7"}', None),
        (b'{"rid":7', None),
        (b"[7]", None),
        (b'{"rid":7,"x":"\xff"}', None),
    ],
)
def test_salvage_rid(data: bytes, rid: int | None) -> None:
    assert salvage_rid(data, L) == rid


def test_salvage_rid_ignores_oversized() -> None:
    data = b'{"rid":7,"pad":"' + b"x" * 2000 + b'"}'
    assert salvage_rid(data, Limits(max_frame_bytes=1024)) is None
    assert salvage_rid(memoryview(data), L) == 7


def test_encode_error() -> None:
    assert json.loads(encode_error(3, InvalidFrame("bad"))) == {
        "t": "error",
        "rid": 3,
        "code": "invalid_frame",
        "message": "bad",
        "retryable": False,
    }
    out = json.loads(encode_error(None, RateLimited()))
    assert out["rid"] is None
    assert out["retryable"] is True
    assert out["message"] == "Too many requests; slow down and retry."
    long = json.loads(encode_error(1, InvalidFrame("x" * 5000)))["message"]
    assert len(long) == 512
    assert long.endswith("...")
