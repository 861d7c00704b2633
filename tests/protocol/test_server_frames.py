"""Server frames: wire shape (``from``, omitted defaults), round trip through the client decoder."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from parley.errors import FrameTooLarge, InvalidFrame, UnknownFrame
from parley.protocol import (
    SERVER_FRAME_TAGS,
    ConvInfo,
    ConvsPage,
    Delivered,
    ErrorFrame,
    HistoryPage,
    Limits,
    Msg,
    Ok,
    Pong,
    PresenceEvent,
    ReadEvent,
    Reconnect,
    Sent,
    SyncPage,
    TypingEvent,
    Welcome,
    decode_server_frame,
    encode,
)

MID = "1.42.phone.1700000000000.abcdefgh"
MSG = Msg(conv=2, seq=10, mid=MID, sender=42, kind="text", body=msgspec.Raw(b'{"text":"hi"}'), ts=5)

SERVER_FRAMES: list[Any] = [
    Welcome(uid=42, device="phone", server_time=1, limits=Limits().welcome()),
    Welcome(uid=42, device="phone", server_time=1, limits=Limits().welcome(recall_window_ms=1)),
    Sent(rid=1, conv=2, mid=MID, seq=10, ts=5),
    Sent(rid=1, conv=2, mid=MID, seq=10, ts=5, dup=True),
    MSG,
    msgspec.structs.replace(MSG, body=msgspec.Raw(b"{}"), recalled=True),
    SyncPage(rid=1, msgs=[MSG, MSG], more=True),
    SyncPage(rid=1, msgs=[], more=False),
    HistoryPage(rid=1, conv=2, msgs=[MSG], more=False),
    ConvsPage(
        rid=1, convs=[ConvInfo(conv=2, kind="group", last_seq=9, read_seq=3, unread=6)], more=False
    ),
    Delivered(conv=2, uid=7, seq=10),
    ReadEvent(conv=2, uid=7, seq=10),
    TypingEvent(conv=2, uid=7, expires_ms=6000),
    PresenceEvent(uid=7, status="offline"),
    PresenceEvent(uid=7, status="busy", text="x"),
    Ok(rid=1, seq=None),
    Ok(rid=1, seq=11),
    ErrorFrame(rid=None, code="rate_limited", message="slow down", retryable=True),
    Pong(rid=None),
    Pong(rid=3),
    Reconnect(reason="shutdown", after_ms=1000),
    Reconnect(reason="moved", after_ms=0, url="ws://other:8080/v1/ws"),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_round_trip(frame: Any) -> None:
    data = encode(frame)
    assert json.loads(data)["t"] in SERVER_FRAME_TAGS
    assert decode_server_frame(data) == frame


def test_every_server_frame_type_is_covered() -> None:
    assert {type(f).__struct_config__.tag for f in SERVER_FRAMES} == SERVER_FRAME_TAGS


def test_msg_wire_shape() -> None:
    assert json.loads(encode(MSG)) == {
        "t": "msg",
        "conv": 2,
        "seq": 10,
        "mid": MID,
        "from": 42,
        "kind": "text",
        "body": {"text": "hi"},
        "ts": 5,
    }
    tomb = json.loads(encode(msgspec.structs.replace(MSG, body=msgspec.Raw(b"{}"), recalled=True)))
    assert tomb["recalled"] is True
    assert tomb["body"] == {}


def test_defaults_omitted_required_nulls_kept() -> None:
    assert "dup" not in json.loads(encode(Sent(rid=1, conv=2, mid=MID, seq=10, ts=5)))
    assert json.loads(encode(Ok(rid=1, seq=None))) == {"t": "ok", "rid": 1, "seq": None}
    assert json.loads(encode(Pong(rid=None))) == {"t": "pong", "rid": None}
    assert "url" not in json.loads(encode(Reconnect(reason="shutdown", after_ms=5)))
    assert json.loads(encode(SyncPage(rid=1, msgs=[], more=False)))["more"] is False
    limits = json.loads(
        encode(Welcome(uid=1, device="d", server_time=0, limits=Limits().welcome()))
    )
    assert limits["limits"]["max_frame_bytes"] == 65536
    assert "recall_window_ms" not in limits["limits"]


def test_server_decoder_is_lenient_on_fields_strict_on_tags() -> None:
    assert decode_server_frame(b'{"t":"pong","rid":1,"new_field":[1]}') == Pong(rid=1)
    with pytest.raises(UnknownFrame):
        decode_server_frame(b'{"t":"future_frame"}')
    with pytest.raises(InvalidFrame):
        decode_server_frame(b'{"t":"pong"}')
    with pytest.raises(FrameTooLarge):
        decode_server_frame(b'{"t":"pong","rid":1}', max_frame_bytes=5)
