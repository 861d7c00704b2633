"""LocalHub and PresenceBook: sessions by user and device, delivery, presence aggregate."""

from __future__ import annotations

import pytest

from parley.hub import LocalHub
from parley.hub.hub import TooManyDevices
from parley.hub.presence import PresenceBook, PresenceState


class Sink:
    def __init__(self, user_id: int, device_id: str, tenant_id: int = 1,
                 session_id: str = "s") -> None:
        self.tenant_id, self.user_id, self.device_id = tenant_id, user_id, device_id
        self.session_id = session_id
        self.messages: list[tuple[int, int, bytes]] = []
        self.events: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def push_message(self, conv: int, seq: int, frame: bytes) -> None:
        self.messages.append((conv, seq, frame))

    def push_event(self, frame: bytes) -> None:
        self.events.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def test_attach_replace_detach_and_counts() -> None:
    hub = LocalHub(max_devices_per_user=2)
    a1, a2, b1 = Sink(7, "a1"), Sink(7, "a2"), Sink(8, "b1", tenant_id=2)
    assert hub.attach(a1) is None and hub.attach(a2) is None and hub.attach(b1) is None
    assert (hub.session_count, hub.user_count) == (3, 2)
    assert hub.is_online(1, 7) and hub.is_online(2, 8)
    assert not hub.is_online(2, 7) and not hub.is_online(1, 8)
    assert sorted(s.device_id for s in hub.devices(1, 7)) == ["a1", "a2"]
    assert list(hub.devices(1, 99)) == []
    a1b = Sink(7, "a1")
    assert hub.attach(a1b) is a1  # the same device again replaces the old session
    assert hub.session_count == 3
    assert not hub.detach(a1)  # no longer the current one
    assert hub.detach(a1b) and not hub.detach(a1b)
    assert hub.detach(a2)
    assert not hub.is_online(1, 7)
    assert (hub.session_count, hub.user_count) == (1, 1)
    assert list(hub.sessions()) == [b1]


def test_device_limit() -> None:
    hub = LocalHub(max_devices_per_user=2)
    hub.attach(Sink(7, "a1"))
    hub.attach(Sink(7, "a2"))
    with pytest.raises(TooManyDevices):
        hub.attach(Sink(7, "a3"))
    assert hub.attach(Sink(7, "a2")) is not None  # replacing is not one more
    assert hub.session_count == 2
    zero = LocalHub(max_devices_per_user=0)
    with pytest.raises(TooManyDevices):
        zero.attach(Sink(7, "a1"))
    assert not zero.is_online(1, 7) and zero.user_count == 0


def test_delivery_and_skip() -> None:
    hub = LocalHub()
    a1, a2, b1 = Sink(7, "a1"), Sink(7, "a2"), Sink(8, "b1")
    for s in (a1, a2, b1):
        hub.attach(s)
    assert hub.deliver_message(1, [7, 8, 9], 5, 11, b"m") == 3
    assert a1.messages == a2.messages == b1.messages == [(5, 11, b"m")]
    assert hub.deliver_message(2, [7], 5, 12, b"m") == 0
    assert hub.deliver_event(1, [7, 8], b"e", skip=a2) == 2
    assert (a1.events, a2.events, b1.events) == ([b"e"], [], [b"e"])


def test_close_sessions_by_login_or_device() -> None:
    hub = LocalHub()
    a1, a2, a3 = Sink(7, "a1", session_id="x"), Sink(7, "a2", session_id="y"), Sink(7, "a3",
                                                                                  session_id="x")
    for s in (a1, a2, a3):
        hub.attach(s)
    assert hub.close_sessions(1, 7, 4001, "revoked", session_id="x") == 2
    assert (a1.closed, a2.closed, a3.closed) == ([(4001, "revoked")], [], [(4001, "revoked")])
    assert hub.close_sessions(1, 7, 4001, "gone", device_id="a2") == 1
    assert hub.close_sessions(1, 7, 1000, "all") == 3
    assert hub.close_sessions(1, 8, 1000, "none") == 0


def test_presence_aggregate() -> None:
    book = PresenceBook()
    off = PresenceState("offline")
    assert book.set(1, 7, "phone", "online") == (off, PresenceState("online"))
    assert book.set(1, 7, "laptop", "away", "lunch") == (
        PresenceState("online"), PresenceState("online", "lunch"))  # newest text wins
    assert book.set(1, 7, "tablet", "dnd")[1] == PresenceState("dnd", "")
    assert book.set(1, 7, "laptop", "busy", "meeting")[1] == PresenceState("dnd", "meeting")
    assert book.remove(1, 7, "tablet")[1] == PresenceState("busy", "meeting")
    assert book.set(1, 7, "laptop", "invisible", "hidden")[1] == PresenceState("online", "")
    assert book.set(1, 7, "phone", "invisible")[1] == off
    assert book.set(2, 7, "phone", "away")[1] == PresenceState("away")  # another tenant
    assert book.remove(1, 7, "phone")[1] == off
    assert book.remove(1, 7, "laptop") == (off, off)
    assert book.remove(1, 7, "never") == (off, off)
    assert book.set(1, 7, "phone", "online")[0] == off  # forgotten when the last one left
