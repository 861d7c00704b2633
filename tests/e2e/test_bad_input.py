"""Bad input on a live node: each refusal has its error code, nothing is stored,
the node stays healthy (issue: reliable messaging, tests 7 and 8)."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.protocol import ErrorFrame, Pong, Sent
from parley.server import Node
from tests.e2e.conftest import World
from tests.e2e.raw import RawClient
from tests.gateway.support import RawWs

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9


async def _alice_and_conv(w: World) -> tuple[int, int, int]:
    a, b, c = await w.user("alice"), await w.user("bob"), await w.user("carol")
    conv = (await w.direct(a, b)).id
    foreign = (await w.direct(b, c)).id
    return a, conv, foreign


async def _healthy(w: World, token: str) -> None:
    probe = await RawClient.connect(w.ws_url, token, "probe")
    probe.send({"t": "ping", "rid": 99})
    assert (await probe.expect(Pong)).rid == 99
    await probe.close()


async def test_each_bad_frame_gets_its_error_code(node: Node, caplog: pytest.LogCaptureFixture
                                                  ) -> None:
    w = World(node)
    a, conv, foreign = await _alice_and_conv(w)
    token = w.token(a)
    raw = await RawClient.connect(w.ws_url, token, "a1")
    now = node.clock.now_ms()

    def mid(n: int, uid: int = a, device: str = "a1") -> str:
        return f"1.{uid}.{device}.{now}.badinput{n:04d}"

    good = {"t": "send", "rid": 1, "conv": conv, "mid": mid(1), "kind": "text",
            "body": {"text": "ok"}}
    cases: list[tuple[bytes, str, int | None]] = [
        (b"{not json", "invalid_frame", None),
        (b'{"t":"teleport","rid":2}', "unknown_frame", 2),
        (msgspec.json.encode({**good, "rid": 3, "conv": "three"}), "invalid_frame", 3),
        (msgspec.json.encode({**good, "rid": 4, "body": {"text": 5}}), "invalid_body", 4),
        (msgspec.json.encode({**good, "rid": 5, "kind": "hologram"}), "invalid_body", 5),
        (msgspec.json.encode({**good, "rid": 6, "mid": mid(6, uid=a + 1)}),
         "invalid_message_id", 6),
        (msgspec.json.encode({**good, "rid": 7, "mid": mid(7, device="other")}),
         "invalid_message_id", 7),
        (msgspec.json.encode({**good, "rid": 8, "mid": "1.x"}), "invalid_message_id", 8),
        (msgspec.json.encode({**good, "rid": 9, "conv": foreign, "mid": mid(9)}),
         "not_member", 9),
        (msgspec.json.encode({**good, "rid": 10, "conv": 10**9, "mid": mid(10)}),
         "not_member", 10),
        (msgspec.json.encode({**good, "rid": 11, "kind": "recall", "mid": mid(11),
                              "body": {"mid": mid(1)}}), "invalid_body", 11),
        (msgspec.json.encode({**good, "rid": 12, "kind": "location", "mid": mid(12),
                              "body": {"lat": 91, "lon": 0}}), "invalid_body", 12),
    ]
    for data, code, rid in cases:
        raw.send_bytes(data)
        err = await raw.expect(ErrorFrame)
        assert (err.code, err.rid) == (code, rid), (data, err)
        assert err.message
    raw.send(good)
    assert (await raw.expect(Sent)).seq == 1
    raw.send({**good, "rid": 13, "body": {"text": "other payload"}})
    err = await raw.expect(ErrorFrame)
    assert (err.code, err.rid) == ("idempotency_conflict", 13)
    assert [seq for seq, _ in await w.rows(conv)] == [1]
    assert await w.rows(foreign) == []
    # Oversize frame: refused and the socket closed with 1009.
    raw.send_bytes(b'{"t":"ping","pad":"' + b"x" * 70_000 + b'"}')
    close_code, _ = await asyncio.wait_for(asyncio.shield(raw.closed), 10)
    assert close_code == 1009
    await _healthy(w, token)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("frame", "close_code"),
    [
        ({"opcode": TEXT, "payload": b'{"t":"ping"}', "masked": False}, 1002),
        ({"opcode": TEXT, "payload": b'{"t":"ping"}', "rsv": 0b100}, 1002),
        ({"opcode": 0x3, "payload": b"x"}, 1002),
        ({"opcode": PING, "payload": b"x", "fin": False}, 1002),
        ({"opcode": PING, "payload": b"x" * 126}, 1002),
        ({"opcode": TEXT, "payload": b'{"t":"ping","rid":"\xff\xfe"}'}, 1007),
        ({"opcode": BINARY, "payload": b"\x00\x01"}, 1003),
    ],
    ids=["unmasked", "reserved-bits", "unknown-opcode", "fragmented-ping", "long-ping",
         "invalid-utf8", "binary"],
)
async def test_websocket_violations_close_with_rfc6455_codes(
    node: Node, frame: dict[str, object], close_code: int
) -> None:
    w = World(node)
    a = await w.user("alice")
    token = w.token(a)
    raw = await RawWs.open(node.ws_port, "/v1/ws?device=d1",
                           headers=[("Authorization", f"Bearer {token}")])
    raw.send(**frame)  # type: ignore[arg-type]
    closing = await raw.recv_close()
    assert closing.close_code == close_code
    await raw.close()
    await _healthy(w, token)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["t", "rid", "conv", "mid", "kind", "body", "seq", "cursors",
                             "limit", "status", "text", "before", "after"]),
            st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60),
                      st.text(max_size=30), st.sampled_from(
                          ["send", "ack", "sync", "history", "read", "typing", "presence",
                           "recall", "convs", "ping", "text", "online"]),
                      st.lists(st.integers(0, 5), max_size=3),
                      st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
            max_size=8,
        ).map(msgspec.json.encode),
    ),
    min_size=1, max_size=10,
))
async def test_random_frames_never_break_the_node(
    node: Node, frames: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    w = World(node)
    if not hasattr(node, "_fuzz_user"):
        node._fuzz_user = await w.user("fuzz")  # type: ignore[attr-defined]
    token = w.token(node._fuzz_user)  # type: ignore[attr-defined]
    raw = await RawClient.connect(w.ws_url, token, "fz")
    for f in frames:
        raw.send_bytes(f)
    raw.send({"t": "ping", "rid": 424242})
    try:
        async with asyncio.timeout(10):
            while (got := await raw.next_frame()) is not None:
                if isinstance(got, Pong) and got.rid == 424242:
                    break
    finally:
        await raw.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await _healthy(w, token)
