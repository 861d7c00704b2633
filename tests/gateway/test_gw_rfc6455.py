"""RFC 6455 robustness with hand-built frames on raw sockets.

Each broken frame must draw a close frame with the RFC's code, the TCP
connection must end, ``on_close`` must see the same code, and the server must
go on accepting and echoing.  Which side enforces what:

* picows: masking (5.1), unknown opcodes, fragmented or > 125-byte control
  frames (5.5), per-frame size (1009), close codes < 3000 that are undefined and
  a close reason that is not UTF-8.
* the gateway (picows leaves these to its user): reserved bits, binary frames
  (1003), continuation frames out of place, UTF-8 of text (1007), reassembled
  message size (1009), close codes 1006 and >= 5000.
"""

from __future__ import annotations

import logging
import struct

import pytest

from parley.gateway import closecodes

from .support import BINARY, CLOSE, CONT, PING, PONG, TEXT, RawWs, Recorder, encode_frame, running

P = closecodes.PROTOCOL_ERROR


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


CASES: dict[str, tuple[list[bytes], int]] = {
    "unmasked": ([encode_frame(TEXT, b"hi", masked=False)], P),
    "rsv1": ([encode_frame(TEXT, b"hi", rsv=4)], P),
    "rsv2": ([encode_frame(TEXT, b"hi", rsv=2)], P),
    "rsv3": ([encode_frame(TEXT, b"hi", rsv=1)], P),
    "rsv-on-ping": ([encode_frame(PING, b"hi", rsv=4)], P),
    "opcode-3": ([encode_frame(0x3, b"hi")], P),
    "opcode-0xB": ([encode_frame(0xB, b"hi")], P),
    "fragmented-ping": ([encode_frame(PING, b"hi", fin=False)], P),
    "ping-126-bytes": ([encode_frame(PING, b"p" * 126)], P),
    "close-126-bytes": ([encode_frame(CLOSE, close_payload(1000, b"r" * 124))], P),
    "continuation-first": ([encode_frame(CONT, b"hi")], P),
    "text-inside-fragmented": ([encode_frame(TEXT, b"a", fin=False), encode_frame(TEXT, b"b")], P),
    "binary": ([encode_frame(BINARY, b"\x00\x01")], closecodes.UNSUPPORTED_DATA),
    "binary-fragmented": ([encode_frame(BINARY, b"\x00", fin=False)], closecodes.UNSUPPORTED_DATA),
    "invalid-utf8": ([encode_frame(TEXT, b"ok \xff\xfe")], closecodes.INVALID_TEXT),
    "overlong-utf8": ([encode_frame(TEXT, b"\xc0\xaf")], closecodes.INVALID_TEXT),
    "surrogate-utf8": ([encode_frame(TEXT, b"\xed\xa0\x80")], closecodes.INVALID_TEXT),
    "truncated-utf8": ([encode_frame(TEXT, "é".encode()[:1])], closecodes.INVALID_TEXT),
    "invalid-utf8-across-fragments": (
        [encode_frame(TEXT, b"\xe2\x82", fin=False), encode_frame(CONT, b"A")],
        closecodes.INVALID_TEXT,
    ),
    "close-1-byte": ([encode_frame(CLOSE, b"\x03")], P),
    "close-code-999": ([encode_frame(CLOSE, close_payload(999))], P),
    "close-code-1004": ([encode_frame(CLOSE, close_payload(1004))], P),
    "close-code-1005": ([encode_frame(CLOSE, close_payload(1005))], P),
    "close-code-1006": ([encode_frame(CLOSE, close_payload(1006))], P),
    "close-code-1015": ([encode_frame(CLOSE, close_payload(1015))], P),
    "close-code-5000": ([encode_frame(CLOSE, close_payload(5000))], P),
    "close-invalid-utf8-reason": (
        [encode_frame(CLOSE, close_payload(1000, b"\xff"))],
        closecodes.INVALID_TEXT,
    ),
    "16-bit-length-for-small-frame": ([b"\x81\xfe\x00\x05" + b"\x00" * 4 + b"hello"], P),
}


async def assert_still_serving(port: int) -> None:
    client = await RawWs.open(port)
    client.send(TEXT, b"are you there?")
    frame = await client.recv()
    assert (frame.opcode, frame.payload) == (TEXT, b"are you there?")
    await client.close()


@pytest.mark.parametrize("case", list(CASES))
async def test_broken_frames_fail_the_connection(case: str) -> None:
    frames, code = CASES[case]
    rec = Recorder(echo=True)
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        client.send(TEXT, b"before")
        assert (await client.recv()).payload == b"before"
        for raw in frames:
            client.send_raw(raw)
        close = await client.recv_close()
        assert close.close_code == code
        await client.expect_eof()
        await client.close()
        assert await rec.next_close() == (conn, code)
        assert rec.close_calls[conn.id] == 1
        assert server.connection_count == 0
        await assert_still_serving(server.port)


@pytest.mark.parametrize(
    ("payload", "answer", "reported"),
    [
        (close_payload(1000, b"bye"), 1000, 1000),
        (close_payload(1001), 1001, 1001),
        (close_payload(4321, "✓".encode()), 4321, 4321),
        (b"", 1000, closecodes.NO_STATUS),  # no code: answer 1000, report 1005
    ],
)
async def test_client_close_is_answered_and_tcp_closed(
    payload: bytes, answer: int, reported: int
) -> None:
    rec = Recorder()
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        client.send(CLOSE, payload)
        reply = await client.recv()
        assert (reply.opcode, reply.close_code) == (CLOSE, answer)
        await client.expect_eof()
        await client.close()
        assert await rec.next_close() == (conn, reported)


async def test_ping_is_answered_with_the_same_payload_and_pong_ignored() -> None:
    rec = Recorder(echo=True)
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        await rec.next_open()
        client.send(PONG, b"unsolicited")
        client.send(PING, b"\x00\xffabc")
        frame = await client.recv()
        assert (frame.opcode, frame.payload) == (PONG, b"\x00\xffabc")
        client.send(TEXT, b"ok")
        assert (await client.recv()).payload == b"ok"
        await client.close()


async def test_tcp_drop_without_close_frame_reports_1006() -> None:
    rec = Recorder()
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        await client.close()
        assert await rec.next_close() == (conn, closecodes.ABNORMAL)


async def test_garbage_before_the_upgrade_is_400() -> None:
    rec = Recorder(echo=True)
    async with running(rec) as server:
        client = await RawWs.open(server.port)  # a good one first
        await client.close()
        status, _, bad = await RawWs.connect(
            server.port, "/v1/ws?device=d&token=good-1", headers=[("Bad Header", "x")]
        )
        assert status == 400
        await bad.close()
        await assert_still_serving(server.port)


async def test_peer_caused_errors_do_not_log_at_error_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="parley.gateway")
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        client.send(TEXT, b"unmasked", masked=False)  # picows' own check, logged by picows
        assert (await client.recv_close()).close_code == P
        await client.close()
        assert await rec.next_close() == (conn, P)
    picows_records = [r for r in caplog.records if r.name == "parley.gateway.picows"]
    assert any("un-masked" in r.getMessage() for r in picows_records)
    assert all(r.levelno <= logging.INFO for r in caplog.records)
