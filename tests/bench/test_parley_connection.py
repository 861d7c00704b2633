"""The Parley target's connection, without a server: the frames it writes from
templates are the codec's, its light decoders read what the protocol's do, pushes
are handed on in order and acked once per conversation 50 ms after the first."""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any

import msgspec
from picows import WSMsgType
from picows.picows import _make_test_ws_frame

from parley.bench import targets
from parley.bench.targets import ParleyConnection, ParleyConnector, _AckTimer
from parley.protocol import (
    Ack,
    ErrorFrame,
    Limits,
    Msg,
    Reconnect,
    Send,
    Sent,
    Sync,
    SyncPage,
    Welcome,
    WelcomeLimits,
    check_message_id,
    decode_client_frame,
    encode,
)
from tests.waiting import until

UID = 42
LIMITS = WelcomeLimits(max_frame_bytes=65536, max_text_chars=4000, max_custom_bytes=4096,
                       max_mentions=50, sync_page_max=1000, history_page_max=200,
                       convs_page_max=500, mid_max_past_ms=1, mid_max_future_ms=1)


class _Events:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def acked(self, token: int) -> None:
        self.calls.append(("acked", token))

    def failed(self, token: int, code: str) -> None:
        self.calls.append(("failed", token, code))

    def delivered(self, payload: bytes) -> None:
        self.calls.append(("delivered", payload))

    def closed(self, code: int, reason: str) -> None:
        self.calls.append(("closed", code))


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, msg_type: WSMsgType, data: bytes) -> None:
        assert msg_type is WSMsgType.TEXT
        self.sent.append(data)

    def send_close(self, code: object) -> None:
        pass

    def disconnect(self) -> None:
        pass


def _frame(data: bytes) -> Any:
    return _make_test_ws_frame(WSMsgType.TEXT, data, True, False)


def _push(conn: ParleyConnection, data: bytes) -> None:
    """A text frame from the server, as picows hands it on."""
    conn.on_ws_frame(None, _frame(data))  # type: ignore[arg-type]


def _msg(seq: int, payload: bytes, sender: int = 7, conv: int = 9) -> bytes:
    return encode(Msg(conv=conv, seq=seq, mid=f"1.{sender}.d.1.abcdefgh", sender=sender,
                      kind="text", body=msgspec.Raw(b'{"text":"' + payload + b'"}'), ts=1))


def _connected(acks: _AckTimer | None = None,
               bases: dict[int, int] | None = None,
               identity: tuple[bytes, int] | None = None,
               resumed: dict[int, int] | None = None,
               ) -> tuple[ParleyConnection, _Events, _Transport]:
    events, ws = _Events(), _Transport()
    conn = ParleyConnection(events, "bench", bases, acks or _AckTimer(), identity, resumed)
    conn.on_ws_connected(ws)  # type: ignore[arg-type]
    _push(conn, encode(Welcome(uid=UID, device="bench", server_time=1, limits=LIMITS)))
    assert conn.welcomed.done()
    return conn, events, ws


async def test_send_frame_is_the_codecs() -> None:
    conn, _, ws = _connected()
    now_ms = time.time_ns() // 1_000_000
    conn.send("9", b"3.17.123456789", 17)
    (data,) = ws.sent
    frame = decode_client_frame(data, Limits())
    assert isinstance(frame, Send)
    assert (frame.rid, frame.conv, frame.kind) == (17, 9, "text")
    assert bytes(frame.body) == b'{"text":"3.17.123456789"}'
    assert encode(frame) == data
    mid = check_message_id(frame.mid, UID, "bench", now_ms)
    assert mid.rand.endswith("0000000017")


async def test_light_decoders_read_msg_sent_and_the_rest() -> None:
    conn, events, _ = _connected()
    _push(conn, encode(Sent(rid=5, conv=9, mid="1.42.bench.1.abcdefgh", seq=1, ts=1, dup=True)))
    _push(conn, _msg(1, b"7.1.99"))
    _push(conn, encode(ErrorFrame(rid=6, code="forbidden", message="no", retryable=False)))
    _push(conn, b'{"t":"future_frame","x":1}')  # skipped, as is a broken one
    _push(conn, b'{"t":"msg","conv":"not an id"}')
    # "t" not first: the protocol's decoder reads them
    _push(conn, b'{"conv":9,"seq":2,"t":"msg","mid":"1.7.d.1.abcdefgh",'
                b'"from":7,"kind":"text","body":{"text":"7.2.99"},"ts":1}')
    _push(conn, b'{"rid":8,"t":"sent","conv":9,"mid":"1.42.bench.1.abcdefgh","seq":3,"ts":1}')
    assert events.calls == [("acked", 5), ("delivered", b"7.1.99"), ("failed", 6, "forbidden"),
                            ("delivered", b"7.2.99"), ("acked", 8)]


async def test_pushes_in_order_without_own_or_repeats_and_one_ack_after_50_ms() -> None:
    acks = _AckTimer()
    conn, events, ws = _connected(acks, bases={9: 0})
    for seq, sender in ((2, 7), (1, 7), (2, 7), (3, UID), (4, 7)):
        _push(conn, _msg(seq, b"7.%d.1" % seq, sender))
    _push(conn, _msg(1, b"8.1.1", conv=10))
    assert [c[1] for c in events.calls] == [b"7.1.1", b"7.2.1", b"7.4.1", b"8.1.1"]
    assert conn.repushed == 1
    assert ws.sent == []
    assert acks._handle is not None  # one timer for both conversations, due in 50 ms
    assert 0.04 < acks._handle.when() - asyncio.get_running_loop().time() <= 0.05
    await asyncio.sleep(0.1)
    assert sorted(ws.sent) == sorted([encode(Ack(conv=9, seq=4)), encode(Ack(conv=10, seq=1))])
    _push(conn, _msg(5, b"7.5.1"))
    conn.close()  # flushes what is due
    assert ws.sent[-1] == encode(Ack(conv=9, seq=5))
    await asyncio.sleep(0.1)
    assert len(ws.sent) == 3


async def test_one_ack_timer_serves_every_connection() -> None:
    acks = _AckTimer()
    a, _, ws_a = _connected(acks)
    b, _, ws_b = _connected(acks)
    _push(a, _msg(1, b"7.1.1"))
    await asyncio.sleep(0.02)
    _push(b, _msg(1, b"7.1.1"))
    _push(b, _msg(2, b"7.2.1"))
    # each connection is due 50 ms after its own first message, on the same timer
    (at_a, conn_a), (at_b, conn_b) = acks._due
    assert (conn_a, conn_b) == (a, b) and at_b - at_a >= 0.02
    assert acks._handle is not None and acks._handle.when() == at_a
    await asyncio.sleep(0.1)
    assert (ws_a.sent, ws_b.sent) == ([encode(Ack(conv=9, seq=1))], [encode(Ack(conv=9, seq=2))])
    assert acks._handle is None and not acks._due


async def test_connector_travels_to_a_worker_without_its_timer() -> None:
    connector = ParleyConnector(bases={9: 3})
    conn, _, _ = _connected(connector.acks)
    _push(conn, _msg(1, b"7.1.1"))
    copy = pickle.loads(pickle.dumps(connector))
    assert copy.bases == {9: 3}
    assert copy.acks is not connector.acks and not copy.acks._due


async def test_a_resumed_connection_sends_the_same_ids_and_syncs_from_where_it_was() -> None:
    """What a worker does after the server closed a connection: the new one writes
    a resent message byte for byte as before (so the server stores it once), asks
    ``sync`` from each conversation's last contiguous seq, and hands on the page's
    messages like pushes: in order, none twice, its own left out."""
    old, _, old_ws = _connected(bases={9: 0})
    old.send("9", b"3.17.1.0", 17)
    for seq in (1, 2, 4):  # 4 waits for 3, which the old connection never got
        _push(old, _msg(seq, b"7.%d.1" % seq))
    old.close()
    assert old.positions() == {9: 2}

    new, events, ws = _connected(bases=old.positions(), identity=old.identity)
    new.send("9", b"3.17.1.0", 17)
    assert ws.sent[-1] == old_ws.sent[0]
    new.sync()
    frame = decode_client_frame(ws.sent[-1], Limits())
    assert isinstance(frame, Sync) and [(c.conv, c.seq) for c in frame.cursors] == [(9, 2)]

    page = SyncPage(rid=0, more=True, msgs=[
        msgspec.json.decode(_msg(seq, b"7.%d.1" % seq, sender), type=Msg)
        for seq, sender in ((2, 7), (3, 7), (4, UID), (5, 7))])
    _push(new, encode(page))
    assert [c[1] for c in events.calls] == [b"7.3.1", b"7.5.1"]  # 2 was had, 4 is its own
    assert new.repushed == 1
    again = decode_client_frame(ws.sent[-1], Limits())  # "more": the next page from 5
    assert isinstance(again, Sync) and [(c.conv, c.seq) for c in again.cursors] == [(9, 5)]

    # Closed again before it sent or received anything (its slot moved on while
    # the cluster rebalanced): the next one still starts from 5, not from the
    # run's start, where every message above it would wait for a gap forever.
    brief, _, _ = _connected(bases={9: 0, **new.positions()}, identity=new.identity,
                             resumed=new.positions())
    brief.close()
    assert brief.positions() == {9: 5}


async def test_a_gap_still_open_after_a_second_is_synced(monkeypatch: Any) -> None:
    """A message whose push never came (it went to the user's previous node while
    its sessions moved) holds every later one back: after ``_GAP_SYNC_S`` the
    connection asks ``sync``, once per gap and period; a gap filled in time costs
    nothing."""
    monkeypatch.setattr(targets, "_GAP_SYNC_S", 0.2)
    acks = _AckTimer()
    conn, events, ws = _connected(acks, bases={9: 0, 10: 0})
    for conv, seq in ((9, 1), (9, 3), (10, 2), (10, 1)):  # 10's gap fills at once
        _push(conn, _msg(seq, b"7.%d.%d" % (seq, conv), conv=conv))

    def syncs() -> list[Sync]:
        frames = [decode_client_frame(data, Limits()) for data in ws.sent]
        return [f for f in frames if isinstance(f, Sync)]

    await until(syncs, 5, "a sync")
    (sync,) = syncs()
    assert [(c.conv, c.seq) for c in sync.cursors] == [(9, 1), (10, 2)]
    assert acks.gap_syncs == 1

    page = SyncPage(rid=0, more=False, msgs=[
        msgspec.json.decode(_msg(seq, b"7.%d.9" % seq), type=Msg) for seq in (2, 3)])
    _push(conn, encode(page))
    delivered = [c[1] for c in events.calls if c[0] == "delivered"]
    assert delivered == [b"7.1.9", b"7.1.10", b"7.2.10", b"7.2.9", b"7.3.9"]
    assert conn.repushed == 1  # 3 came again in the page
    # the watch stops once no gap is open
    await until(lambda: acks._gap_handle is None, 5, "the gap watch to stop")
    assert acks._gap_handle is None and len(syncs()) == 1 and acks.gap_syncs == 1


async def test_a_connection_moved_after_its_welcome_remembers_where_to() -> None:
    """A slot moving while the user is connected: ``reconnect`` (moved, url), then
    close 4010; the worker resumes at that url, not at the node that sent it away."""
    conn, events, _ = _connected()
    _push(conn, encode(Reconnect(reason="shutdown", after_ms=1000)))
    assert conn.moved_to is None
    _push(conn, encode(Reconnect(reason="moved", after_ms=0, url="ws://127.0.0.1:9/v1/ws")))
    assert conn.moved_to == "ws://127.0.0.1:9/v1/ws"
    assert events.calls == []


async def test_a_retryable_refusal_from_a_node_shutting_down_is_left_to_the_resume() -> None:
    """A node that stops refuses sends with ``unavailable`` once its message store
    stopped and before it closes the connection: such a send stays unacknowledged
    (the resume sends it again); the same refusal from a node that is not shutting
    down, or a final refusal, is a failure."""
    conn, events, _ = _connected()
    unavailable = ErrorFrame(rid=1, code="unavailable", message="stopping", retryable=True)
    _push(conn, encode(unavailable))
    assert events.calls == [("failed", 1, "unavailable")]
    _push(conn, encode(Reconnect(reason="shutdown", after_ms=1000)))
    _push(conn, encode(ErrorFrame(rid=2, code="unavailable", message="stopping",
                                  retryable=True)))
    assert events.calls == [("failed", 1, "unavailable")]
    _push(conn, encode(ErrorFrame(rid=3, code="forbidden", message="no", retryable=False)))
    assert events.calls == [("failed", 1, "unavailable"), ("failed", 3, "forbidden")]
